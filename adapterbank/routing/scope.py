"""Out of scope: is a text close enough to the task the router chose, by that task's own statistics?

The score is the Mahalanobis distance to the task's nearest class under the task's *own* within-class
covariance, shrunk toward a scaled identity (`SCOPE_SHRINKAGE`). The router's shared covariance is not
used: it changes with every task added, and a threshold calibrated under it drifted (4-6 % of in-scope
texts refused at the setting meant for 1 %). A task's own statistics never change, so its threshold holds.

The threshold is a quantile of *held-out* distances: `SCOPE_FOLDS`-fold, each text scored against class
means and a covariance estimated without it. In-sample distances are too small in 2,048 dimensions from a
thousand texts (12-29 % of in-scope texts were refused at 1 %).

At answer time the covariance is the task's stored factor (statistics.py: F F^T + tail I, F's columns
orthogonal), so the distance costs one [D, k] product a text, no matrix inverse.

Chosen on validation (MiniLM kernel features; CLINC150's validation split with its out-of-scope texts, and
Banking77's carved fifth with 11 held-out intents as out of scope): AUROC 0.972 / 0.799 at shrinkage 0.4
against 0.959 / 0.741 for the cosine to the nearest class, which banks made before (and causal banks) use.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch

SCOPE_SHRINKAGE = 0.4  # weight of the scaled identity in a task's own covariance (validation: 0.2-0.8 within 0.003 AUROC)
SCOPE_FOLDS = 5
QUANTILES = 101  # the stored table: quantiles 0, 0.01, ..., 1 of the held-out scores
PARTS_CACHED = 32  # tasks whose whitener is kept in memory for the out-of-scope test
COSINE, HELD_OUT_DISTANCE = 0, 1  # a task's out-of-scope score (`scope_kind`): which table its statistics hold


def _shrunk(covariance: torch.Tensor) -> torch.Tensor:
    scale = covariance.diagonal().mean().clamp_min(1e-12)
    return (1 - SCOPE_SHRINKAGE) * covariance + SCOPE_SHRINKAGE * scale * torch.eye(len(covariance), dtype=covariance.dtype)


def _dense_distances(x: torch.Tensor, means: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """[B] squared Mahalanobis distance of each row to its nearest mean under the shrunk `covariance`."""
    chol = torch.linalg.cholesky(_shrunk(covariance))
    z = torch.linalg.solve_triangular(chol, x.T, upper=False).T
    centres = torch.linalg.solve_triangular(chol, means.T, upper=False).T
    return torch.cdist(z, centres).pow(2).min(-1).values


def held_out_quantiles(features: torch.Tensor, rows: torch.Tensor, n_classes: int, seed: int = 0) -> torch.Tensor:
    """[QUANTILES] quantiles of the task's texts' held-out scores (minus the distance: higher is more in
    scope). A task with fewer texts than folds is scored in sample (its threshold is then lenient)."""
    x = features.float()  # fp32: the shrunk covariance is well conditioned, and fp64 took twice as long
    folds = min(SCOPE_FOLDS, len(x))
    assignment = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)) % max(folds, 1)
    distances = torch.empty(len(x))
    for fold in range(max(folds, 1)):
        held = assignment == fold
        fit = ~held if folds > 1 else held
        counts = torch.bincount(rows[fit], minlength=n_classes).float()
        sums = torch.zeros(n_classes, x.shape[1]).index_add_(0, rows[fit], x[fit])
        means = sums / counts.clamp_min(1).unsqueeze(1)
        centred = x[fit] - means[rows[fit]]
        # a class with no text in this fold's fit part has no mean to be near
        distances[held] = _dense_distances(x[held], means[counts > 0], centred.T @ centred / int(fit.sum()))
    return torch.quantile(-distances, torch.linspace(0, 1, QUANTILES))


def whitener(factor: torch.Tensor, scales: torch.Tensor, tail: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(P [D, k], a) with the shrunk inverse of the covariance F F^T + tail I (the stored factor) equal to
    (I - P P^T) / a: a is the shrunk isotropic part, P's columns are F's unit columns v_i times
    sqrt(c l_i / (a + c l_i)), l_i their squared norms, c = 1 - shrinkage (F's columns are orthogonal)."""
    f = factor.float() * scales.float()
    lengths = f.pow(2).sum(0)
    keep = 1 - SCOPE_SHRINKAGE
    scale = ((lengths.sum() + f.shape[0] * tail.float()) / f.shape[0]).clamp_min(1e-12)  # the diagonal's mean, as _shrunk
    a = keep * tail.float() + SCOPE_SHRINKAGE * scale
    weights = keep * lengths / (a + keep * lengths)
    return f * (weights / lengths.clamp_min(1e-30)).sqrt(), a.reshape(())


def nearest_distance(x: torch.Tensor, means: torch.Tensor, project: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """[B] as `_dense_distances`, for the covariance `whitener` describes: one [D, k] product a text."""
    x, means = x.float(), means.float()
    squared = x.pow(2).sum(-1, keepdim=True) - 2 * x @ means.T + means.pow(2).sum(-1)
    along = (x @ project).unsqueeze(1) - (means @ project).unsqueeze(0)
    return ((squared - along.pow(2).sum(-1)) / a).min(-1).values


Factor = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # a stored covariance factor: (factor, scales, tail)


class ScopeParts:
    """Each task's `whitener` for the out-of-scope test, and its stored factor for a router's second stage
    (`factor`). The index holds only what the first stage needs, so a task's factor is read from its file
    (`source(name)`) when a text is first routed to it; the last PARTS_CACHED tasks are kept (3.6 MB each
    on MiniLM), keyed by task id so a task replaced under the same name is read afresh. A factor given with
    `put` becomes a whitener only when first needed (an index rebuilt from 1,000 task files does not make
    1,000 of them): an entry is a factor (3 tensors) until then, a whitener (2) after."""

    def __init__(self, source: Callable[[str], Factor] | None = None):
        self.source = source
        self._cache: OrderedDict[str, Factor | tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def put(self, task_id: str, factor: Factor) -> None:
        self._cache[task_id] = factor
        self._cache.move_to_end(task_id)
        while len(self._cache) > PARTS_CACHED:
            self._cache.popitem(last=False)

    def get(self, name: str, task_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        if task_id not in self._cache:
            if self.source is None:
                raise KeyError(f"no covariance factor for task {name!r}")
            self.put(task_id, self.source(name))
        if len(self._cache[task_id]) == 3:  # still the stored (factor, scales, tail), not yet its whitener
            self._cache[task_id] = whitener(*self._cache[task_id])
        self._cache.move_to_end(task_id)
        return self._cache[task_id]  # type: ignore[return-value]

    def has_factor(self, task_id: str) -> bool:
        """Whether `factor` can answer for the task: it is in memory, or there are task files to read it from."""
        entry = self._cache.get(task_id)
        return self.source is not None or (entry is not None and len(entry) == 3)

    def factor(self, name: str, task_id: str) -> Factor:
        """The task's stored (factor, scales, tail): from memory while it is not yet a whitener, else read
        again (not kept: whoever asks keeps what it derives from it)."""
        entry = self._cache.get(task_id)
        if entry is not None and len(entry) == 3:
            return entry  # type: ignore[return-value]
        if self.source is None:
            raise KeyError(f"no covariance factor for task {name!r}")
        return self.source(name)
