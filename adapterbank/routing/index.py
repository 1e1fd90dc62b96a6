"""The index over all tasks: every task's router statistics in a few matrices, and `route`.

The index is derived data, kept in `router_index.safetensors` at the bank root keyed by the task ids it
was built from, so a bank of 1,000 tasks opens without reading 1,000 files; when it is missing, stale
or damaged it is rebuilt from the task files. Scoring is the router method's (methods.py); the
out-of-scope test is the same for every method: the routed task's own distance to its nearest class
(scope.py; cosine for tasks made before it and for causal banks), against the task's own quantile table.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .. import faults
from ..store.files import write_atomic
from ..store.registry import INDEX_FILE
from .methods import DEFAULT_METHOD, DEFAULT_OOD_QUANTILE, METHODS
from .scope import COSINE, HELD_OUT_DISTANCE, ScopeParts, nearest_distance
from .statistics import PACKED, load_factor, load_statistics


@dataclass
class Route:
    """For one text: candidate tasks best first with the router's probabilities, and whether the text
    falls below the best task's out-of-scope threshold."""

    tasks: list[str]
    probabilities: list[float]
    in_scope: bool = True


class RouterIndex:
    """All tasks' routing statistics in a few matrices; `route` scores a batch against every class at once."""

    def __init__(self, task_names: list[str], task_ids: list[str], tensors: dict[str, torch.Tensor]):
        self.task_names, self.task_ids = task_names, task_ids
        self.t = tensors
        self.t.setdefault("scope_kind", torch.zeros(len(task_names), dtype=torch.long))  # indexes saved before: cosine
        self.parts = ScopeParts()  # each task's covariance factor (out of scope, second stages), read on first use
        self.cache: dict = {}  # what router methods compute from the derived matrices; emptied when they change
        self._fresh_weights = False

    # -- building -------------------------------------------------------------------------------
    @classmethod
    def empty(cls, dim: int) -> "RouterIndex":
        return cls([], [], {"means": torch.zeros(0, dim), "owner": torch.zeros(0, dtype=torch.long),
                            "scatter": torch.zeros(dim, dim, dtype=torch.float64), "total": torch.zeros(1, dtype=torch.float64),
                            "thresholds": torch.zeros(0, 101), "scope_kind": torch.zeros(0, dtype=torch.long)})

    def add(self, name: str, task_id: str, stats: dict[str, torch.Tensor]) -> None:
        t, n = self.t, stats["counts"].sum().double()
        owner = torch.full((stats["means"].shape[0],), len(self.task_names), dtype=torch.long)
        t["means"] = torch.cat([t["means"], stats["means"].float()])
        t["owner"] = torch.cat([t["owner"], owner])
        t["scatter"] = t["scatter"] + stats["covariance"].double() * n
        t["total"] = t["total"] + n
        held_out = "scope_quantiles" in stats
        table = stats["scope_quantiles" if held_out else "score_quantiles"]
        t["thresholds"] = torch.cat([t["thresholds"], table.float().view(1, -1)])
        t["scope_kind"] = torch.cat([t["scope_kind"], torch.tensor([HELD_OUT_DISTANCE if held_out else COSINE])])
        if held_out and PACKED[0] in stats:
            self.parts.put(task_id, tuple(stats[key] for key in PACKED))  # in memory already: no file read later
        self.task_names.append(name)
        self.task_ids.append(task_id)
        self._fresh_weights = False

    def _weights(self) -> None:
        """Derived matrices: normalised prototypes (out of scope, cosine) and each router method's own."""
        if self._fresh_weights:
            return
        for key in [k for k in self.t if k.startswith("_")]:  # in-memory copies of what is re-derived now
            del self.t[key]
        self.cache.clear()
        for method in METHODS.values():
            self.t.update(method.derive(self.t))
        self.t["prototypes"] = torch.nn.functional.normalize(self.t["means"], dim=-1)
        self._fresh_weights = True

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        self._weights()
        kept = {k: v for k, v in self.t.items() if not k.startswith("_")}  # `_` keys: in-memory derived copies
        meta = {"task_names": json.dumps(self.task_names), "task_ids": json.dumps(self.task_ids),
                "sha256": _digest(kept)}

        def write(tmp: Path) -> None:
            save_file({k: v.contiguous() for k, v in kept.items()}, str(tmp), metadata=meta)
            faults.point("index-written")

        write_atomic(path, write)
        faults.point("index-replaced")

    @classmethod
    def load(cls, path: Path) -> "RouterIndex":
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        if meta.get("sha256") != _digest(tensors):
            raise ValueError(f"{path}: content does not match its checksum")
        index = cls(json.loads(meta["task_names"]), json.loads(meta["task_ids"]), tensors)
        # an index saved by an earlier version may lack what a method derives now: derived again, in memory
        derived = ["prototypes", *(key for method in METHODS.values() for key in method.derived)]
        index._fresh_weights = all(key in tensors for key in derived)
        return index

    # -- routing --------------------------------------------------------------------------------
    def task_scores(self, features: torch.Tensor, method: str = DEFAULT_METHOD) -> torch.Tensor:
        """[B, T] log-probabilities over tasks: the method's scores, then its second stage, if it has one."""
        self._weights()
        x = features.float()
        per_task = METHODS[method].task_scores(self.t, x, len(self.task_names))
        return METHODS[method].refine(self, x, torch.log_softmax(per_task, dim=-1))

    def label_scores(self, features: torch.Tensor, task: str, method: str = DEFAULT_METHOD) -> torch.Tensor | None:
        """[B, c] log-probabilities over task `task`'s labels (its label order) from its class statistics,
        as `method` scores them; None if the method scores no classes or the index lacks the task."""
        if task not in self.task_names:
            return None
        self._weights()
        scores = METHODS[method].class_scores(self, features.float(), self.task_names.index(task))
        return None if scores is None else torch.log_softmax(scores, dim=-1)

    def scope_scores(self, features: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        """Each text's out-of-scope score against its task (`tasks`: index positions), what the test
        compares with the task's quantile table (higher is more in scope): minus the held-out distance
        to the task's nearest class (scope.py), or the cosine to it for tasks that keep a cosine table."""
        self._weights()
        # a task's classes are one contiguous block of the index: score each row against its task only
        sizes = torch.bincount(self.t["owner"], minlength=len(self.task_names))
        starts = (sizes.cumsum(0) - sizes).tolist()
        x = features.float()
        unit = torch.nn.functional.normalize(x, dim=-1)
        best = x.new_empty(len(tasks))
        for task in tasks.unique().tolist():
            rows = (tasks == task).nonzero().squeeze(1)
            block = slice(starts[task], starts[task] + int(sizes[task]))
            if int(self.t["scope_kind"][task]) == HELD_OUT_DISTANCE:
                whitener = self.parts.get(self.task_names[task], self.task_ids[task])
                best[rows] = -nearest_distance(x[rows], self.t["means"][block], *whitener)
            else:
                best[rows] = (unit[rows] @ self.t["prototypes"][block].T).max(-1).values
        return best

    def in_scope(self, features: torch.Tensor, tasks: torch.Tensor, quantile: float) -> torch.Tensor:
        """Whether each text is at least as close to its routed task's classes as the task's own
        texts at `quantile` of its table (0 accepts everything)."""
        if quantile <= 0:
            return torch.ones(len(tasks), dtype=torch.bool)
        best = self.scope_scores(features, tasks)
        position = quantile * 100
        low, frac = int(position), position - int(position)
        table = self.t["thresholds"][tasks]
        threshold = table[:, low] + frac * (table[:, min(low + 1, 100)] - table[:, low])
        return best >= threshold

    def route(self, features: torch.Tensor, top_k: int = 1, method: str = DEFAULT_METHOD,
              ood_quantile: float = DEFAULT_OOD_QUANTILE) -> list[Route]:
        if not self.task_names:
            return [Route([], [], False) for _ in range(features.shape[0])]
        probabilities = self.task_scores(features, method).exp()
        top_p, top_i = probabilities.topk(min(top_k, len(self.task_names)), dim=-1)
        keep = self.in_scope(features, top_i[:, 0], ood_quantile)
        return [Route([self.task_names[i] for i in idx], [round(p, 6) for p in ps], bool(ok))
                for ps, idx, ok in zip(top_p.tolist(), top_i.tolist(), keep.tolist())]


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names and bytes: a flipped bit in the saved index is noticed on load."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        digest.update(key.encode("utf-8"))
        digest.update(tensors[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


def in_scope_share(stats: dict[str, torch.Tensor], features: torch.Tensor, quantile: float) -> float:
    """The share of `features` a task with statistics `stats` would keep in scope at `quantile`: a check,
    at add-task time, that the task's own held-out text is not refused by its own threshold."""
    index = RouterIndex.empty(features.shape[1])
    index.add("probe", "probe", stats)
    kept = index.in_scope(features.cpu(), torch.zeros(len(features), dtype=torch.long), quantile)
    return float(kept.float().mean()) if len(kept) else 1.0


def sync_index(bank_root: Path, tasks: dict[str, tuple[str, Path]], dim: int, cached: RouterIndex | None = None,
               verify=None) -> RouterIndex:
    """The index for exactly `tasks` (name -> (id, dir)): reuse `cached` or the saved index when they
    match, extend it when tasks were only added, rebuild from the per-task files otherwise.
    `verify(name)` is called before a task's statistics are read (integrity check). Only reads: the
    writers (add-task, remove) save the index with `save_index`."""
    wanted = [(name, task_id) for name, (task_id, _) in tasks.items()]
    path = Path(bank_root) / INDEX_FILE
    index = cached
    if index is None and path.exists():
        try:
            index = RouterIndex.load(path)
        except Exception:  # derived data: a damaged index is rebuilt, never trusted
            index = None
    have = list(zip(index.task_names, index.task_ids)) if index is not None else []
    # kept when it covers exactly these tasks, extended when tasks were only added, else rebuilt
    if index is None or (have != wanted and (have != wanted[: len(have)] or index.t["means"].shape[1] != dim)):
        index, have = RouterIndex.empty(dim), []
    for name, task_id in wanted[len(have):]:
        if verify is not None:
            verify(name)
        index.add(name, task_id, load_statistics(tasks[name][1]))

    def factor_of(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if verify is not None:  # a saved index skips the task files: check this one before it is read
            verify(name)
        return load_factor(tasks[name][1])

    index.parts.source = factor_of
    return index


def save_index(bank_root: Path, index: RouterIndex) -> str | None:
    """Save the derived index so the next open starts fast. Best effort: on a full or read-only disk the
    bank still answers (readers rebuild the index in memory); returns the reason when it was not saved."""
    from ..store.files import describe_write_error, is_write_error

    path = Path(bank_root) / INDEX_FILE
    try:
        index.save(path)
    except Exception as exc:
        if not is_write_error(exc):
            raise
        return describe_write_error(exc, path)
    return None
