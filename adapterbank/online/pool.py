"""The pending pool: labelled examples a stream brought that no module covers yet, kept in the bank.

One file at the bank root (store/pending.py), written atomically after every chunk of the stream: the
examples' router features, the examples themselves (raw text: it stays until the examples are learned
or `purge` drops them), how many lines of each stream file were consumed, and the graduation in
progress.

Graduation is two-phase, so a kill at any moment loses or repeats nothing: the pool first records
which examples become which task, add-task writes the task, then the pool drops them. The next `learn`
completes a recorded graduation: it drops the examples if the task is in, else runs the add-task again
(readers meanwhile answer from the pool, minus the examples of a task that is in).

While pending, each label answers through the router alone: its class statistics join the index as a
one-label pseudo-task `pending:<label>` (no module; README "Online learning"), never refused as out of
scope (too few examples to set a threshold).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..store.pending import load_pending, save_pending

if TYPE_CHECKING:  # torch is imported where the pool's tensors are used: `verify` reads the pool without it
    import torch

PENDING_PREFIX = "pending:"  # the pseudo-task names of pending labels (not a valid task name: never clashes)


@dataclass
class Pool:
    """The pool's content (`features` row i belongs to `examples[i]`)."""

    examples: list[dict] = field(default_factory=list)  # {"id", "text", "label", "task"?}
    features: "torch.Tensor | None" = None  # [n, D] fp16
    sources: dict[str, int] = field(default_factory=dict)  # stream file -> lines consumed
    graduating: dict | None = None  # {"task": name, "ids": [...]} while add-task runs
    next_id: int = 0
    # the stream's examples of labels a module covers, as statistics (their text is not kept): per label
    # {"label", "task", "count", "base_count"} (row i of `covered_sums`), and their within-class scatter
    covered: list[dict] = field(default_factory=list)
    covered_sums: "torch.Tensor | None" = None  # [k, D] fp32
    covered_scatter: "torch.Tensor | None" = None  # [D, D] fp32

    def absorb(self, rows: list[dict], features: "torch.Tensor", owner, task_stats) -> None:
        """Fold covered examples into the statistics: class means move and the shared within-class scatter grows
        exactly as if the examples had been in the task's data (Chan et al.'s pairwise update; the task's own
        out-of-scope quantiles are kept). `owner(label)` names the task covering it; `task_stats(task)` gives
        that task's router statistics (means, counts)."""
        import torch

        x = features.detach().cpu().float()
        dim = x.shape[1]
        if self.covered_scatter is None:
            self.covered_scatter, self.covered_sums = torch.zeros(dim, dim), torch.zeros(0, dim)
        index = {entry["label"]: i for i, entry in enumerate(self.covered)}
        groups: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(row["label"], []).append(i)
        for label, members in groups.items():
            if label not in index:
                task = owner(label)
                stats = task_stats(task)
                position = stats["labels"].index(label)
                index[label] = len(self.covered)
                self.covered.append({"label": label, "task": task, "count": 0, "base_count": int(stats["counts"][position])})
                self.covered_sums = torch.cat([self.covered_sums, x.new_zeros(1, dim)])
            k = index[label]
            entry, block = self.covered[k], x[members]
            stats = task_stats(entry["task"])
            base_mean = stats["means"][stats["labels"].index(label)].float()
            n, m = entry["base_count"] + entry["count"], len(members)
            mean = (base_mean * entry["base_count"] + self.covered_sums[k]) / max(n, 1)
            new_mean = block.mean(0)
            centred = block - new_mean
            gap = (mean - new_mean).unsqueeze(1)
            self.covered_scatter += centred.T @ centred + (n * m / (n + m)) * (gap @ gap.T)
            self.covered_sums[k] += block.sum(0)
            entry["count"] += m

    def labels(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for example in self.examples:
            counts[example["label"]] = counts.get(example["label"], 0) + 1
        return counts

    def add(self, rows: list[dict], features: "torch.Tensor") -> None:
        import torch

        for row in rows:
            self.examples.append({"id": self.next_id, **row})
            self.next_id += 1
        features = features.detach().cpu().half()
        self.features = features if self.features is None else torch.cat([self.features, features])

    def drop(self, ids: set[int]) -> None:
        keep = [i for i, example in enumerate(self.examples) if example["id"] not in ids]
        self.examples = [self.examples[i] for i in keep]
        self.features = self.features[keep] if self.features is not None and keep else None

    def take(self, ids: set[int]) -> list[dict]:
        return [example for example in self.examples if example["id"] in ids]


def save_pool(root: Path, pool: Pool, dim: int) -> None:
    """Atomically replace the bank's pool file with `pool`."""
    import numpy as np

    body = {"examples": pool.examples, "sources": pool.sources, "graduating": pool.graduating, "next_id": pool.next_id,
            "covered": pool.covered}
    arrays = {"features": pool.features.numpy() if pool.features is not None else np.zeros((0, dim), dtype=np.float16)}
    if pool.covered_scatter is not None:
        arrays.update(covered_sums=pool.covered_sums.numpy(), covered_scatter=pool.covered_scatter.numpy())
    save_pending(root, body, arrays)


def load_pool(root: Path) -> Pool:
    """The bank's pool (empty when it has none); IntegrityError when the file was edited or damaged."""
    import torch

    loaded = load_pending(root)
    if loaded is None:
        return Pool()
    body, arrays = loaded
    tensor = {name: torch.from_numpy(array.copy()) for name, array in arrays.items()}
    return Pool(body["examples"], tensor["features"] if len(tensor["features"]) else None, body["sources"],
                body["graduating"], body["next_id"], body.get("covered", []), tensor.get("covered_sums"),
                tensor.get("covered_scatter"))


class PendingView:
    """What the pool adds to answers: one pseudo-task per pending label, and the router index extended by them."""

    def __init__(self, pool: Pool):
        import torch

        from ..bank import TaskInfo
        from ..routing.statistics import class_statistics

        counts = pool.labels()
        self.labels = list(counts)
        self.records = {PENDING_PREFIX + label: TaskInfo(PENDING_PREFIX + label, Path(), {"labels": [label], "kind": None})
                        for label in self.labels}
        self.stats: list[dict] = []
        if self.labels:
            index = {label: i for i, label in enumerate(self.labels)}
            stats = class_statistics(pool.features.float(), [index[e["label"]] for e in pool.examples], len(self.labels),
                                     held_out_scope=False)  # pseudo-tasks: always in scope
            for i in range(len(self.labels)):
                self.stats.append({"means": stats["means"][i:i + 1], "counts": stats["counts"][i:i + 1],
                                   "covariance": stats["covariance"], "score_quantiles": torch.zeros(101)})
        self.covered, self.covered_sums, self.covered_scatter = pool.covered, pool.covered_sums, pool.covered_scatter
        self._extended: tuple[object, object] | None = None

    def extend(self, index, dim: int, records: dict):
        """`index` (the tasks' RouterIndex, or None) with the stream's covered examples folded into their
        classes, plus the pending labels; cached per index object."""
        from ..routing.index import RouterIndex

        if self._extended is not None and self._extended[0] is index:
            return self._extended[1]
        base = index if index is not None else RouterIndex.empty(dim)
        extended = RouterIndex(list(base.task_names), list(base.task_ids), dict(base.t))
        extended.parts = base.parts
        self._fold_covered(extended, records)
        for name, stats in zip(self.records, self.stats):
            extended.add(name, name, stats)
        self._extended = (index, extended)
        return extended

    def _fold_covered(self, index, records: dict) -> None:
        import torch

        t, folded = index.t, 0
        sizes = torch.bincount(t["owner"], minlength=len(index.task_names))
        starts = (sizes.cumsum(0) - sizes).tolist()
        means = t["means"].clone()
        for k, entry in enumerate(self.covered):
            info = records.get(entry["task"])
            if info is None or entry["task"] not in index.task_names or entry["label"] not in info.labels:
                continue  # its task was removed or replaced since
            row = starts[index.task_names.index(entry["task"])] + info.labels.index(entry["label"])
            means[row] = (means[row] * entry["base_count"] + self.covered_sums[k]) / (entry["base_count"] + entry["count"])
            folded += entry["count"]
        if folded:
            t["means"], t["scatter"] = means, t["scatter"] + self.covered_scatter.double()
            t["total"] = t["total"] + folded
            index._fresh_weights = False


def with_pending(bank, records: dict, index):
    """(records, index) that answer now on a classification bank: its tasks' plus one router-only pseudo-task per
    pending label. The view is cached on the bank (`bank._pending`) until the pool file changes."""
    from ..store.pending import pool_stamp

    stamp = pool_stamp(bank.path)
    if stamp is None:
        return records, index
    if bank._pending is None or bank._pending[0] != stamp:
        pool = load_pool(bank.path)
        if pool.graduating is not None and bank.registry.has_task(pool.graduating["task"]):
            pool.drop(set(pool.graduating["ids"]))  # a killed graduation's task is in: its examples left the pool
        bank._pending = (stamp, PendingView(pool))
    view = bank._pending[1]
    if not view.labels and not view.covered:
        return records, index
    return {**records, **view.records}, view.extend(index, bank.registry.manifest["router"]["feature_dim"], records)
