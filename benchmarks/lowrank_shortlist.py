"""Would a low-rank first stage keep the router's best class? (tried for the top-k target; not adopted). Prints JSON.

    python benchmarks/lowrank_shortlist.py [--seed 0] [--synthetic-tasks 1000]    # ~5 minutes on 2 CPU cores

The idea: score every class in r << 2,048 dimensions (the discriminant's top-r right singular vectors V, so one
[64, D] x [D, r] product per batch and [r] per class), then re-score each text's best k classes exactly, as the int8
shortlist does (routing/methods.py). It cuts the multiply-adds D / r times on any CPU, but only works if the exact
best class stays in the approximate best k. Measured here: the share of validation texts (task_covariance.py's
splits: CLINC150's validation split, a fifth of Banking77's training texts) whose exact best class under
`mahalanobis` is in the low-rank best k, per rank r, for each dataset's index, both in one index (227 real
classes), and that index crowded with `--synthetic-tasks` tasks of 10 synthetic classes placed among the real
ones (common.crowding, as routing.py's cold-open bank).
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
from adapterbank.routing.index import RouterIndex  # noqa: E402
from adapterbank.routing.statistics import class_statistics  # noqa: E402
from common import crowding  # noqa: E402
from task_covariance import splits  # noqa: E402

RANKS = (16, 32, 64, 96, 128, 256)
SHORTLISTS = (1, 8, 32)


def recall(index: RouterIndex, x: torch.Tensor) -> dict:
    """{rank: {k: share of rows of x whose exact best class is in the rank-r best k}} (mahalanobis logits)."""
    index.task_scores(x[:1], "mahalanobis")  # derives the discriminant
    t = index.t
    centred = x - t["centre"]
    weights, bias = t["discriminant"], t["bias"]
    best = (centred @ weights.T + bias).argmax(-1)
    out = {}
    for rank in RANKS:
        if rank >= min(weights.shape):
            continue
        _, _, v = torch.svd_lowrank(weights, q=rank, niter=4)
        approx = (centred @ v) @ (weights @ v).T + bias
        out[str(rank)] = {str(k): round(float((approx.topk(k, -1).indices == best[:, None]).any(-1).float().mean()), 4)
                          for k in SHORTLISTS}
    return out


def _features(seed: int) -> dict:
    """{dataset: (training texts' router features, their labels, validation features, tasks)}, from a bank
    that lives only as long as this call (the frozen base's features need no task)."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        bank = AdapterBank.create(f"{tmp}/bank")
        for name in ("clinc150", "banking77"):
            train_x, train_y, val_x, _, _, _, tasks = splits(name, seed)
            out[name] = (bank.router_features(train_x).float().cpu(), train_y,
                         bank.router_features(val_x).float().cpu(), tasks)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--synthetic-tasks", type=int, default=1000)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    out: dict = {"seed": args.seed, "ranks": RANKS, "shortlists": SHORTLISTS, "recall": {}}
    both = None
    texts = []
    for name, (features, train_y, x, tasks) in _features(args.seed).items():
        own = RouterIndex.empty(features.shape[1])
        both = RouterIndex.empty(features.shape[1]) if both is None else both
        for k, labels in enumerate(tasks):
            position = {label: i for i, label in enumerate(labels)}
            rows = [i for i, y in enumerate(train_y) if y in position]
            stats = class_statistics(features[rows], [position[train_y[i]] for i in rows], len(labels))
            own.add(f"t{k}", f"{name}-{k}", stats)
            both.add(f"{name}-t{k}", f"{name}-{k}", stats)
        out["recall"][f"{name} ({len(own.t['means'])} classes)"] = recall(own, x)
        texts.append(x)
        print(json.dumps(out["recall"]), file=sys.stderr, flush=True)  # progress
    x = torch.cat(texts)
    out["recall"][f"both ({len(both.t['means'])} classes)"] = recall(both, x)
    crowd = crowding(both.t["means"].clone())
    dim = x.shape[1]
    g = torch.Generator().manual_seed(args.seed)
    for i in range(args.synthetic_tasks):
        both.add(f"synthetic-{i}", f"s{i}", {"counts": torch.full((10,), 50.0), "means": crowd(10, g),
                                             "covariance": torch.eye(dim) / dim,
                                             "score_quantiles": torch.linspace(-1, 1, 101)})
    out["recall"][f"both + {args.synthetic_tasks} synthetic tasks ({len(both.t['means'])} classes)"] = recall(both, x)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
