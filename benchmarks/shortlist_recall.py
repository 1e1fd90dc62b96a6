"""How often a low-precision first pass keeps the router's exact best class in its shortlist, on real features.
Prints JSON.

    python benchmarks/shortlist_recall.py [--data-root ../shared/data]

A router index is built from the kernel-space features of CLINC150 (15 tasks x 10 intents) and Banking77
(7 x 11) training texts, as add-task builds it; their test texts (and CLINC150's out-of-scope ones) are
scored against all 227 classes in fp32 (the reference), then by each first pass: bf16 or int8 products,
with the discriminant uncentred (as before the centring) or centred on the mean class mean (methods.py),
and the router's own first pass (PyTorch's quantised linear, methods.int8_logits).
Reported: the share of texts whose reference best class is among the first pass's best k; then, as synthetic
tasks join, `route`'s time with and without the shortlist (where SHORTLIST_MIN_CLASSES comes from). About
2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from adapterbank import AdapterBank, load_dataset  # noqa: E402
from adapterbank.routing.index import RouterIndex  # noqa: E402
from adapterbank.routing import methods  # noqa: E402
from adapterbank.routing.methods import METHODS, int8_logits, shared_covariance  # noqa: E402
from adapterbank.routing.statistics import class_statistics  # noqa: E402
from common import DATA_ROOT, crowding  # noqa: E402

DEFAULT_SHORTLIST_MIN = methods.SHORTLIST_MIN_CLASSES

SETS = (("clinc150", 10, ["test", "oos_test"]), ("banking77", 11, ["test"]))
KS = (1, 2, 4, 8, 16)
SYNTHETIC_TASKS = (0, 30, 80, 180, 380)  # 227 to 4,027 classes


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
    out["route_ms_per_64_by_classes"] = speed_by_classes(index, x)
    print(json.dumps(out, indent=2))


def speed_by_classes(index: RouterIndex, x: torch.Tensor) -> list[dict]:
    """From how many classes the shortlist pays: `route` for 64 real texts (median of 200 calls after 20 to
    warm up) with every class in fp32 and with the shortlist, as synthetic 10-class tasks join the real ones
    (common.crowding, as in routing.py's cold open), and the share of all texts whose best task is
    the same both ways."""
    real = index.t["means"].clone()
    crowd = crowding(real)
    g = torch.Generator().manual_seed(0)
    covariance = torch.eye(real.shape[1]) / real.shape[1]
    rows, added = [], 0
    for synthetic in SYNTHETIC_TASKS:
        for i in range(added, synthetic):
            index.add(f"synthetic-{i}", f"synthetic-{i}", {"counts": torch.full((10,), 50.0), "covariance": covariance,
                                                           "means": crowd(10, g),
                                                           "score_quantiles": torch.zeros(101)})
        added = synthetic
        row = {"classes": len(index.t["means"])}
        for name, threshold in (("fp32", 10 ** 9), ("shortlist", 0)):
            methods.SHORTLIST_MIN_CLASSES = threshold
            calls = sorted([timed(lambda: index.route(x[:64], top_k=3, ood_quantile=0)) for _ in range(220)][20:])
            row[f"{name}_ms"] = round(calls[len(calls) // 2] * 1000, 3)
            row[f"{name}_best"] = index.task_scores(x).argmax(-1)
        row["agreement"] = round(float((row.pop("fp32_best") == row.pop("shortlist_best")).float().mean()), 5)
        rows.append(row)
    methods.SHORTLIST_MIN_CLASSES = DEFAULT_SHORTLIST_MIN
    return rows


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
