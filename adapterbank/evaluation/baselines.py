"""The baselines a continual-learning run is compared with: a registry, each entry one function over
what the run shares (the tasks, the base, the training config). What they compute is in
baseline_models.py, imported when a run starts, so listing the baselines (the CLI's help) loads no model.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

from . import metrics


class Shared:
    """What several baselines reuse within one run (a baseline_models.Setting and what is derived from
    it), computed on first use."""

    def __init__(self, setting: Any):
        self.setting = setting

    @functools.cached_property
    def embeddings(self):
        from .baseline_models import FrozenEmbeddings

        return FrozenEmbeddings(self.setting)

    @functools.cached_property
    def test_states(self):
        from .baseline_models import TestStates

        return TestStates(self.setting)

    @functools.cached_property
    def zero_training(self) -> list[float]:
        from .baseline_models import zero_training

        return zero_training(self.setting, self.embeddings)


@dataclass(frozen=True)
class Baseline:
    name: str
    summary: str
    run: Callable[[Shared], dict]


def _joint(shared: Shared) -> dict:
    from .baseline_models import joint

    per_task = joint(shared.setting, shared.test_states)
    return {"average_accuracy": sum(per_task) / len(per_task), "bwt": None, "forgetting": None, "per_task_accuracy": per_task}


def _matrix(matrix: list[list[float | None]], shared: Shared) -> dict:
    return {**metrics.summary(matrix, shared.zero_training), "accuracy_matrix": matrix}


def _seqlora(shared: Shared) -> dict:
    from .baseline_models import seqlora

    return _matrix(seqlora(shared.setting, shared.test_states), shared)


def _replay(shared: Shared) -> dict:
    from .baseline_models import replay

    return _matrix(replay(shared.setting, shared.test_states), shared)


def _ewc(shared: Shared) -> dict:
    from .baseline_models import ewc

    return _matrix(ewc(shared.setting, shared.test_states), shared)


def _ncm(shared: Shared) -> dict:
    from .baseline_models import ncm

    return _matrix(ncm(shared.setting, shared.embeddings), shared)


BASELINES: dict[str, Baseline] = {b.name: b for b in (
    Baseline("joint", "one module trained on every task at once (the usual upper bound)", _joint),
    Baseline("seqlora", "one module fine-tuned through the tasks in order (catastrophic forgetting)", _seqlora),
    Baseline("replay", "seqlora plus a bounded, seeded, class-balanced replay buffer of earlier tasks' examples (1,000)", _replay),
    Baseline("ewc", "seqlora plus an online EWC penalty (diagonal Fisher, lambda 1,000) on what earlier tasks trained", _ewc),
    Baseline("ncm", "frozen embeddings, nearest class mean over the labels seen so far (no training)", _ncm),
)}
