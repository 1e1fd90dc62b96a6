"""How often a low-precision first pass keeps the router's exact best class in its shortlist, on real features.
Prints JSON.

    python benchmarks/shortlist_recall.py [--data-root ../shared/data]

A router index is built from the kernel-space features of CLINC150 (15 tasks x 10 intents) and Banking77
(7 x 11) training texts, as add-task builds it; their test texts (and CLINC150's out-of-scope ones) are
scored against all 227 classes in fp32 (the reference), then by each first pass: bf16 or int8 products,
with the discriminant uncentred (as before the centring) or centred on the mean class mean (methods.py),
and the router's own first pass (PyTorch's quantised linear, methods.int8_logits).
Reported: the share of texts whose reference best class is among the first pass's best k. About 3 minutes
on 2 CPU cores (mostly the features).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from adapterbank import AdapterBank, load_dataset  # noqa: E402
from adapterbank.routing.index import RouterIndex  # noqa: E402
from adapterbank.routing.methods import METHODS, int8_logits, shared_covariance  # noqa: E402
from adapterbank.routing.statistics import class_statistics  # noqa: E402
from common import DATA_ROOT  # noqa: E402

SETS = (("clinc150", 10, ["test", "oos_test"]), ("banking77", 11, ["test"]))
KS = (1, 2, 4, 8, 16)


def int8_rows(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = matrix.abs().amax(-1, keepdim=True).clamp_min(1e-30) / 127
    return (matrix / scale).round().to(torch.int8), scale


def first_passes(x: torch.Tensor, t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """(fp32 reference logits, {name: approximate logits}); the centred ones are the router's own (derive)."""
    means = t["means"]
    uncentred = torch.linalg.solve(shared_covariance(t), means.T).T
    uncentred_bias = -0.5 * (uncentred * means).sum(-1)
    reference = x @ uncentred.T + uncentred_bias
    derived = METHODS["mahalanobis"].derive(t)
    centred, bias, xc = derived["discriminant"], derived["bias"], x - derived["centre"]
    passes = {"bf16 uncentred": (x.bfloat16() @ uncentred.bfloat16().T).float() + uncentred_bias,
              "bf16 centred": (xc.bfloat16() @ centred.bfloat16().T).float() + bias}
    for name, (w, b, rows) in {"int8 uncentred": (uncentred, uncentred_bias, x), "int8 centred": (centred, bias, xc)}.items():
        (wq, ws), (xq, xs) = int8_rows(w), int8_rows(rows)
        passes[name] = torch._int_mm(xq, wq.T.contiguous()).float() * xs * ws.T + b
    # what the router ships: the quantised linear (uint8 texts with the range reduced a bit, int8 rows)
    passes["int8 centred, quantised linear (the router's)"] = int8_logits(dict(derived), xc)
    return reference, passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bank = AdapterBank.create(Path(tmp) / "bank")  # for its router features (kernel map included)
        index, queries = None, []
        for name, per_task, splits in SETS:
            train = load_dataset(args.data_root / name / "train.jsonl")
            features = bank.router_features(train.texts).float().cpu()
            index = index or RouterIndex.empty(features.shape[1])
            intents = sorted(train.labels)
            random.Random(0).shuffle(intents)
            for t in range(len(intents) // per_task):
                labels = intents[t * per_task:(t + 1) * per_task]
                position = {label: i for i, label in enumerate(labels)}
                rows = [i for i, label in enumerate(train.targets) if label in position]
                stats = class_statistics(features[rows], [position[train.targets[i]] for i in rows], len(labels),
                                         held_out_scope=False)
                index.add(f"{name}-{t}", f"{name}-{t}", stats)
            queries += [bank.router_features(load_dataset(args.data_root / name / f"{s}.jsonl").texts).float().cpu()
                        for s in splits]
    x = torch.cat(queries)
    reference, passes = first_passes(x, index.t)
    best = reference.argmax(-1, keepdim=True)
    out = {"texts": len(x), "classes": len(index.t["means"]), "recall_of_the_best_class_in_the_best_k": {
        name: {str(k): round(float((logits.topk(k, -1).indices == best).any(-1).float().mean()), 5) for k in KS}
        for name, logits in passes.items()}}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
