"""The probe behind the `task-covariance` router method: each task's own covariance blended into the pooled one.
Prints JSON. (The method as built is measured on validation by task_covariance_router.py.)

    python benchmarks/task_covariance.py [--alphas 0.05,0.1,0.2,0.3] [--seed 0]    # ~5 minutes on 2 cores

`mahalanobis` scores every class with one covariance pooled over all tasks (routing/methods.py). A task's
texts need not spread like the pool's, and each task already stores its own within-class covariance (as the int8
factor of routing/statistics.py). This scores task t's classes with (1 - alpha) * pooled + alpha * C_t (shrunk as
the router shrinks, with its log-determinant: a regularised QDA over tasks) and reports task-routing accuracy on
CLINC150 (15 x 10; chosen on its validation split, reported on test) and Banking77 (7 x 11; chosen on a fifth
carved from the training texts, reported on test), over every task and re-scoring only `mahalanobis`'s
top 3 (what a cheap second stage would do). The statistics are what a bank stores (class_statistics: means and
the packed covariance), computed on the bank's own router features (the kernel map over frozen MiniLM).
Not the bank's router: no speed is measured, and alpha = 0 is `mahalanobis`'s decision up to rounding.

`--ranks` also scores the form a scalable second stage would need (Woodbury over one shared matrix):
(1 - alpha) * shrunk pooled + alpha * F_r F_r^T, F_r the first r columns of the task's stored factor (no tail).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from adapterbank import AdapterBank, load_dataset  # noqa: E402
from adapterbank.routing.methods import SHRINKAGE, shrunk  # noqa: E402
from adapterbank.routing.statistics import PACKED, class_statistics  # noqa: E402
from common import DATA_ROOT  # noqa: E402


def splits(name: str, seed: int):
    """(train, validation, test, tasks): label lists dealt as routing.py (CLINC150) and continual_eval (Banking77) deal them."""
    root = DATA_ROOT / name
    train, test = load_dataset(root / "train.jsonl"), load_dataset(root / "test.jsonl")
    labels = sorted(train.labels)
    random.Random(seed).shuffle(labels)
    if name == "clinc150":
        return train.texts, train.targets, *_pair(load_dataset(root / "validation.jsonl")), *_pair(test), \
            [labels[i * 10:(i + 1) * 10] for i in range(15)]
    rows = list(range(len(train)))
    random.Random(seed).shuffle(rows)
    held = set(rows[:len(rows) // 5])
    keep = [i for i in range(len(train)) if i not in held]
    pick = lambda idx, seq: [seq[i] for i in idx]  # noqa: E731
    return pick(keep, train.texts), pick(keep, train.targets), pick(sorted(held), train.texts), \
        pick(sorted(held), train.targets), *_pair(test), [labels[i * 11:(i + 1) * 11] for i in range(7)]


def capped(train_y: list, cap: int, seed: int) -> list[int]:
    """Rows of at most `cap` training texts per label, a seeded sample: the few-text rows of the validation benchmarks."""
    by_label: dict = {}
    for i, y in enumerate(train_y):
        by_label.setdefault(y, []).append(i)
    rng = random.Random(seed)
    return sorted(i for rows in by_label.values() for i in rng.sample(rows, min(cap, len(rows))))


def _pair(data):
    return data.texts, data.targets


ALL_COLUMNS = 1 << 30  # a rank beyond any factor's width: every stored column


def blends(pooled: torch.Tensor, covariances: list, factors: list, alpha: float, rank: int | None) -> list:
    """Each task's covariance: the exact blend, shrunk (rank None), or the low-rank form over the shrunk pool
    with that many of the factor's columns (any rank at least the factor's width: all of them)."""
    if rank is None:
        return [shrunk((1 - alpha) * pooled + alpha * own) for own in covariances]
    return [(1 - alpha) * shrunk(pooled) + alpha * f[:, :rank] @ f[:, :rank].T for f in factors]


def task_scores(x: torch.Tensor, means: list, covariances: list) -> torch.Tensor:
    """[B, tasks] log-evidence: log-sum over a task's classes of Gaussian likelihoods with the task's covariance."""
    out = []
    for mu, covariance in zip(means, covariances):
        factor = torch.linalg.cholesky(covariance)
        z = torch.linalg.solve_triangular(factor, x.T, upper=False).T
        centres = torch.linalg.solve_triangular(factor, mu.T, upper=False).T
        out.append(torch.logsumexp(-0.5 * torch.cdist(z, centres).pow(2), -1) - factor.diagonal().log().sum())
    return torch.stack(out, -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alphas", default="0.05,0.1,0.2,0.3")
    parser.add_argument("--datasets", default="clinc150,banking77")
    parser.add_argument("--ranks", default="64,all", help="low-rank forms to score at each alpha ('' for none)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    alphas = [float(a) for a in args.alphas.split(",")]
    ranks = [(r, ALL_COLUMNS if r == "all" else int(r)) for r in args.ranks.split(",") if r]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        bank = AdapterBank.create(f"{tmp}/bank")
        out: dict = {"seed": args.seed, "shrinkage": SHRINKAGE, "runs": {}}
        for name in args.datasets.split(","):
            train_x, train_y, val_x, val_y, test_x, test_y, tasks = splits(name, args.seed)
            features = bank.router_features(train_x).double()
            means, covariances, factors, counts = [], [], [], []
            for labels in tasks:
                index = {label: i for i, label in enumerate(labels)}
                rows = [i for i, y in enumerate(train_y) if y in index]
                stats = class_statistics(features[rows], [index[train_y[i]] for i in rows], len(labels), held_out_scope=False)
                means.append(stats["means"].double())
                covariances.append(stats["covariance"].double())  # as stored: the packed int8 factor, unpacked
                factors.append((stats[PACKED[0]].double() * stats[PACKED[1]].double()))
                counts.append(len(rows))
            pooled = sum(c * n for c, n in zip(covariances, counts)) / sum(counts)
            owner = {label: t for t, labels in enumerate(tasks) for label in labels}
            run = {}
            for split, texts, gold in (("validation", val_x, val_y), ("test", test_x, test_y)):
                x, truth = bank.router_features(texts).double(), torch.tensor([owner[y] for y in gold])
                base = task_scores(x, means, blends(pooled, covariances, factors, 0.0, None))
                top3 = base.topk(3, -1).indices
                scored = {"0": {"every_task": _accuracy(base.argmax(-1), truth)}}
                for alpha in alphas:
                    scores = task_scores(x, means, blends(pooled, covariances, factors, alpha, None))
                    rescored = top3.gather(1, scores.gather(1, top3).argmax(-1, keepdim=True)).squeeze(1)
                    scored[str(alpha)] = {"every_task": _accuracy(scores.argmax(-1), truth), "top3": _accuracy(rescored, truth)}
                    for label, rank in ranks:
                        low = task_scores(x, means, blends(pooled, covariances, factors, alpha, rank))
                        scored[str(alpha)][f"low_rank_{label}"] = _accuracy(low.argmax(-1), truth)
                run[split] = scored
            chosen = max(run["validation"], key=lambda a: run["validation"][a]["every_task"])
            run["chosen_on_validation"] = chosen
            out["runs"][name] = run
            print(json.dumps({name: run}), flush=True)
    out["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out, indent=2))


def _accuracy(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    return round((predicted == truth).double().mean().item() * 100, 2)


if __name__ == "__main__":
    main()
