"""The one training loop: AdamW on a one-cycle schedule over a stream of batches, with hooks.

Every objective (classification, causal LM) brings its own batches and its own loss; what happens
around each step (a progress bar, the named kill points of the crash tests, the loss record the
metrics come from) is a hook, so the loop stays a dozen lines a reader can hold in their head.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol, Sequence

import torch

from .. import faults
from ..errors import AdapterBankError

WARMUP_FRACTION = 0.1  # share of the steps the one-cycle schedule spends rising to the peak learning rate


@dataclass
class LoopState:
    """What hooks see after each step."""

    step: int
    total: int
    loss: float
    size: int  # examples (or tokens) in the step's batch
    postfix: dict = field(default_factory=dict)


class Hook(Protocol):
    def on_step(self, state: LoopState) -> None: ...

    def on_end(self) -> None: ...


class ProgressBar:
    """A tqdm bar over the steps, showing the last loss (and what the batches add to `postfix`)."""

    def __init__(self, total: int, description: str, enabled: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=description, unit="step", disable=not enabled, leave=False)

    def on_step(self, state: LoopState) -> None:
        self.bar.update(1)
        self.bar.set_postfix(**state.postfix, loss=f"{state.loss:.3f}")

    def on_end(self) -> None:
        self.bar.close()


class KillPoints:
    """`train-step-<n>`: where the crash tests SIGKILL a training run (faults.py)."""

    def on_step(self, state: LoopState) -> None:
        faults.point(f"train-step-{state.step}")

    def on_end(self) -> None:
        pass


def warmup_fraction(total_steps: int) -> float:
    """WARMUP_FRACTION, except where torch's OneCycleLR would end its rise exactly at step 0 and divide by
    zero (total_steps * fraction == 1: 10 steps); there the rise takes two steps."""
    return WARMUP_FRACTION if WARMUP_FRACTION * total_steps != 1 else 2 / total_steps


@dataclass
class LoopResult:
    steps: int
    seconds: float
    losses: list[float]  # per step
    sizes: list[int]  # per step: examples (or tokens) seen


def train(param_groups: Sequence[dict], batches: Iterable[Any], step_loss: Callable[[Any], tuple[torch.Tensor, int, dict]],
          total_steps: int, hooks: Sequence[Hook] = ()) -> LoopResult:
    """Run `total_steps` optimizer steps (fewer if `batches` ends first).

    `param_groups`: AdamW groups, each with its peak `lr` (and `weight_decay`). `step_loss(batch)`
    returns (loss, batch size, progress postfix). The schedule is one-cycle: a rise over the first 10 %
    of the steps, then a cosine decay."""
    optimizer = torch.optim.AdamW([dict(group) for group in param_groups])
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[group["lr"] for group in param_groups],
                                                    total_steps=max(total_steps, 1), pct_start=warmup_fraction(total_steps))
    result = LoopResult(0, 0.0, [], [])
    started = time.perf_counter()
    try:
        for batch in itertools.islice(batches, total_steps):
            loss, size, postfix = step_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            value = loss.item()
            if not math.isfinite(value):  # NaN weights must never be saved as a module
                raise AdapterBankError(f"training diverged: the loss is {value} at step {result.steps + 1} of "
                                       f"{total_steps}; nothing was saved (lower the learning rate, --lr)")
            optimizer.step()
            scheduler.step()
            result.steps += 1
            result.losses.append(value)
            result.sizes.append(size)
            state = LoopState(result.steps, total_steps, result.losses[-1], size, postfix)
            for hook in hooks:
                hook.on_step(state)
    finally:
        for hook in hooks:
            hook.on_end()
    if not all(torch.isfinite(p).all() for group in optimizer.param_groups for p in group["params"]):
        raise AdapterBankError("training diverged: the trained weights are not finite; nothing was saved "
                               "(lower the learning rate, --lr)")
    result.seconds = time.perf_counter() - started
    return result
