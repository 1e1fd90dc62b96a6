"""Choosing which task's module answers a text, from statistics stored per task at add-task time.

The router reads the frozen lower-layer features of backbone.py (never raw text). Per task it stores
class means, class counts, the within-class covariance and the distribution of its own training texts'
similarity to its classes (for the out-of-scope threshold). Two methods, one interface (`RouterIndex.route`):

- `prototype`: cosine similarity to the nearest class mean; a task scores its best class.
- `mahalanobis` (default, measured best): Gaussian classes with one covariance shared by all tasks,
  pooled from every task's statistics and shrunk toward a scaled identity; a task's evidence is the
  log-sum of its classes' likelihoods, turned into probabilities over tasks.

The index over all tasks is derived data, kept in `router_index.safetensors` at the bank root keyed by
the task ids it was built from, so a bank of 1,000 tasks opens without reading 1,000 files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .. import faults
from ..store.registry import write_atomic

ROUTER_FILE = "router.safetensors"
INDEX_FILE = "router_index.safetensors"
METHODS = ("mahalanobis", "prototype")
DEFAULT_METHOD = "mahalanobis"
SHRINKAGE = 0.02  # weight of the scaled identity in the pooled covariance (measured: 0.02-0.05 best on CLINC150)
PROTOTYPE_TEMPERATURE = 0.05
DEFAULT_OOD_QUANTILE = 0.01  # a text scoring below this quantile of its task's own training texts is out of scope


def class_statistics(features: torch.Tensor, targets: Sequence[int], n_classes: int) -> dict[str, torch.Tensor]:
    """What the router keeps of a task: class means/counts, within-class covariance, and the
    quantiles of the training texts' leave-one-out best cosine to the task's classes."""
    x = features.float()
    rows = torch.as_tensor(list(targets))
    counts = torch.bincount(rows, minlength=n_classes).float()
    sums = torch.zeros(n_classes, x.shape[1]).index_add_(0, rows, x)
    means = sums / counts.clamp_min(1).unsqueeze(1)
    centred = x - means[rows]
    covariance = centred.T @ centred / max(len(x), 1)
    # leave-one-out class means: a text is scored against prototypes that do not contain it
    loo_own = (sums[rows] - x) / (counts[rows] - 1).clamp_min(1).unsqueeze(1)
    cos = torch.nn.functional.normalize(x, dim=-1) @ torch.nn.functional.normalize(means, dim=-1).T
    own = torch.nn.functional.cosine_similarity(x, loo_own, dim=-1)
    cos[torch.arange(len(x)), rows] = torch.where(counts[rows] > 1, own, cos[torch.arange(len(x)), rows])
    quantiles = torch.quantile(cos.max(-1).values, torch.linspace(0, 1, 101))
    return {"means": means, "counts": counts, "covariance": covariance.half(), "score_quantiles": quantiles}


def save_statistics(task_dir: Path, stats: dict[str, torch.Tensor]) -> None:
    save_file({k: v.contiguous() for k, v in stats.items()}, str(Path(task_dir) / ROUTER_FILE))


def load_statistics(task_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(task_dir) / ROUTER_FILE))


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
        self._fresh_weights = False

    # -- building -------------------------------------------------------------------------------
    @classmethod
    def empty(cls, dim: int) -> "RouterIndex":
        return cls([], [], {"means": torch.zeros(0, dim), "owner": torch.zeros(0, dtype=torch.long),
                            "scatter": torch.zeros(dim, dim, dtype=torch.float64), "total": torch.zeros(1, dtype=torch.float64),
                            "thresholds": torch.zeros(0, 101)})

    def add(self, name: str, task_id: str, stats: dict[str, torch.Tensor]) -> None:
        t, n = self.t, stats["counts"].sum().double()
        owner = torch.full((stats["means"].shape[0],), len(self.task_names), dtype=torch.long)
        t["means"] = torch.cat([t["means"], stats["means"].float()])
        t["owner"] = torch.cat([t["owner"], owner])
        t["scatter"] = t["scatter"] + stats["covariance"].double() * n
        t["total"] = t["total"] + n
        t["thresholds"] = torch.cat([t["thresholds"], stats["score_quantiles"].float().view(1, -1)])
        self.task_names.append(name)
        self.task_ids.append(task_id)
        self._fresh_weights = False

    def _weights(self) -> None:
        """Derived matrices: normalised prototypes (cosine) and the shared-covariance discriminants."""
        if self._fresh_weights:
            return
        t = self.t
        means = t["means"]
        dim = means.shape[1]
        covariance = (t["scatter"] / t["total"].clamp_min(1)).float()
        covariance = (1 - SHRINKAGE) * covariance + SHRINKAGE * covariance.diagonal().mean().clamp_min(1e-6) * torch.eye(dim)
        weights = torch.linalg.solve(covariance, means.T).T if len(means) else means
        t["prototypes"] = torch.nn.functional.normalize(means, dim=-1)
        t["discriminant"] = weights.contiguous()
        t["bias"] = -0.5 * (weights * means).sum(-1)
        self._fresh_weights = True

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        self._weights()
        meta = {"task_names": json.dumps(self.task_names), "task_ids": json.dumps(self.task_ids),
                "sha256": _digest(self.t)}

        def write(tmp: Path) -> None:
            save_file({k: v.contiguous() for k, v in self.t.items()}, str(tmp), metadata=meta)
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
        index._fresh_weights = "discriminant" in tensors
        return index

    # -- routing --------------------------------------------------------------------------------
    def task_scores(self, features: torch.Tensor, method: str = DEFAULT_METHOD) -> torch.Tensor:
        """[B, T] log-probabilities over tasks."""
        self._weights()
        t, x = self.t, features.float()
        if method == "prototype":
            similarity = torch.nn.functional.normalize(x, dim=-1) @ t["prototypes"].T / PROTOTYPE_TEMPERATURE
            per_task = similarity.new_full((x.shape[0], len(self.task_names)), -torch.inf)
            per_task.scatter_reduce_(1, t["owner"].expand_as(similarity), similarity, reduce="amax")
        elif method == "mahalanobis":
            logits = x @ t["discriminant"].T + t["bias"]
            peak = logits.max(-1, keepdim=True).values
            evidence = logits.new_zeros(x.shape[0], len(self.task_names))
            evidence.index_add_(1, t["owner"], (logits - peak).exp())
            per_task = evidence.clamp_min(1e-30).log()
        else:
            raise ValueError(f"unknown router method {method!r}; choose one of: {', '.join(METHODS)}")
        return torch.log_softmax(per_task, dim=-1)

    def in_scope(self, features: torch.Tensor, tasks: torch.Tensor, quantile: float) -> torch.Tensor:
        """Whether each text is at least as close to its routed task's classes as the task's own
        training texts at `quantile` (0 accepts everything)."""
        if quantile <= 0:
            return torch.ones(len(tasks), dtype=torch.bool)
        self._weights()
        # a task's classes are one contiguous block of the index: score each row against its task only
        sizes = torch.bincount(self.t["owner"], minlength=len(self.task_names))
        starts = (sizes.cumsum(0) - sizes).tolist()
        x = torch.nn.functional.normalize(features.float(), dim=-1)
        best = x.new_empty(len(tasks))
        for task in tasks.unique().tolist():
            rows = (tasks == task).nonzero().squeeze(1)
            block = self.t["prototypes"][starts[task]:starts[task] + int(sizes[task])]
            best[rows] = (x[rows] @ block.T).max(-1).values
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


def sync_index(bank_root: Path, tasks: dict[str, tuple[str, Path]], dim: int, cached: RouterIndex | None = None,
               persist: bool = True, verify=None) -> RouterIndex:
    """The index for exactly `tasks` (name -> (id, dir)): reuse `cached` or the saved index when they
    match, extend it when tasks were only added, rebuild from the per-task files otherwise.
    `verify(name)` is called before a task's statistics are read (integrity check)."""
    wanted = [(name, task_id) for name, (task_id, _) in tasks.items()]
    path = Path(bank_root) / INDEX_FILE
    index = cached
    if index is None and path.exists():
        try:
            index = RouterIndex.load(path)
        except Exception:  # derived data: a damaged index is rebuilt, never trusted
            index = None
    have = list(zip(index.task_names, index.task_ids)) if index is not None else []
    if have == wanted and index is not None:
        return index
    if index is None or have != wanted[: len(have)] or index.t["means"].shape[1] != dim:
        index, have = RouterIndex.empty(dim), []
    for name, task_id in wanted[len(have):]:
        if verify is not None:
            verify(name)
        index.add(name, task_id, load_statistics(tasks[name][1]))
    if persist:
        try:
            index.save(path)
        except OSError:
            pass  # a read-only bank still routes; it just rebuilds the index next time
    return index
