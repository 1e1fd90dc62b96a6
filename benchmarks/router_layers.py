"""Which of the frozen base's layers should the router read? Validation only; prints JSON.

    python benchmarks/router_layers.py [--seed 0]    # ~15 minutes on 2 CPU cores

The router reads the mean pools of the last ROUTER_DEPTH (3) layers below the split (core/backbone.py): on
MiniLM with modules on the top layer, the outputs of layers 3, 4 and 5 of 6. Every layer below the split is
computed anyway, so any subset of them costs nothing more. Reading the frozen top layer (6) costs one more
layer per text, since routed inference runs only the modules' adapted copy of it.

For each subset of layers (0: the embeddings), this builds the router's features as a bank does (each pool
L2-normalised, concatenated, then the kernel map of routing/kernel.py sized by `KernelMap.for_features`), the
index from the training texts' statistics (`class_statistics`, `RouterIndex.add`), and reports task-routing
accuracy on task_covariance.py's validation splits (CLINC150's validation split, 15 x 10; a fifth carved
from Banking77's training texts, 7 x 11) for `mahalanobis` and `task-covariance`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from adapterbank import AdapterBank  # noqa: E402
from adapterbank.core import DEFAULT_MAX_LENGTH  # noqa: E402
from adapterbank.core.backbone import SplitEncoder  # noqa: E402
from adapterbank.core.encoding import map_batches, mean_pool, tokenize  # noqa: E402
from adapterbank.routing.kernel import KernelMap  # noqa: E402
from task_covariance_router import _accuracy, _index  # noqa: E402
from task_covariance import splits  # noqa: E402

# free (below the split) first, then those that read the frozen top layer; (3, 4, 5) is the router's today
SUBSETS = ((3, 4, 5), (4, 5), (2, 3, 4, 5), (1, 2, 3, 4, 5), (0, 1, 2, 3, 4, 5), (1, 3, 5),
           (6,), (5, 6), (4, 5, 6), (3, 4, 5, 6), (2, 3, 4, 5, 6))
METHODS = ("mahalanobis", "task-covariance")


def _pools(bank, texts: list[str]) -> torch.Tensor:
    """[N, layers + 1, H] fp16: each layer's L2-normalised mean pool (0: the embeddings), texts cut as predict cuts them."""
    model, tokenizer = bank.base.model, bank.base.tokenizer

    def pools(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        states = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        return torch.stack([torch.nn.functional.normalize(mean_pool(h, mask).float(), dim=-1) for h in states], 1).half()

    with torch.no_grad():
        return map_batches(pools, tokenize(tokenizer, texts, DEFAULT_MAX_LENGTH), tokenizer, bank.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out: dict = {"seed": args.seed, "validation": {}}
    with tempfile.TemporaryDirectory() as tmp:
        bank = AdapterBank.create(f"{tmp}/bank")
        out["router_layers_today"] = SplitEncoder(bank.base.model).router_layers
        for name in ("clinc150", "banking77"):
            train_x, train_y, val_x, val_y, _, _, tasks = splits(name, args.seed)
            train, val = _pools(bank, train_x), _pools(bank, val_x)
            owner = {label: k for k, labels in enumerate(tasks) for label in labels}
            truth = torch.tensor([owner[y] for y in val_y])
            rows = {}
            for layers in SUBSETS:
                kernel = KernelMap.for_features(len(layers) * train.shape[2], len(layers))
                features = lambda pools: kernel(pools[:, list(layers)].float().flatten(1))  # noqa: E731
                index = _index(features(train), train_y, tasks, range(len(train_y)))
                x = features(val)
                key = ",".join(map(str, layers))
                rows[key] = {method: _accuracy(index.task_scores(x, method).argmax(-1), truth)
                             for method in METHODS}
                print(json.dumps({name: {key: rows[key]}}), file=sys.stderr, flush=True)  # progress
            out["validation"][name] = {"texts": len(val_y), "routing": rows}
    names = list(out["validation"])
    out["mean_task_covariance"] = {key: round(sum(out["validation"][n]["routing"][key]["task-covariance"] for n in names) / len(names), 3)
                                   for key in out["validation"][names[0]]["routing"]}
    out["best"] = max(out["mean_task_covariance"], key=out["mean_task_covariance"].get)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
