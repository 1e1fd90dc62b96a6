"""How a classification task's module is trained: one dataclass, each default defined here once.

task.json stores it (`config`, as `dataclasses.asdict` gives it) beside the resolved values
(`hyperparameters`); `adapterbank show` prints both.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from ..core import DEFAULT_MAX_LENGTH
from ..kinds import DEFAULT_KIND, get_kind, resolve_params
from ..errors import AdapterBankError
from ..settings import MAX_BATCH, MAX_EPOCHS, MAX_LR, MAX_TOKENS, check, check_number, seed_setting, setting

HEAD_LR = 1e-2  # the cosine head's peak learning rate, whatever the kind
MAX_DEPTH = 256  # a bound for the setting's check; add-task checks depth against the base's own layer count
AUTO_DEPTH = "auto"  # depth chosen at add-task time on held-out training texts (classify/depth.py)


@dataclasses.dataclass
class ClassificationConfig:
    objective: ClassVar[str] = "classification"
    MIN_STEPS: ClassVar[int] = 120  # default epochs give about this many optimizer steps (3 to 20 epochs)

    kind: str = setting(DEFAULT_KIND, "Module kind.")
    params: Any = None  # the kind's hyper-parameters (its Params dataclass); None: the kind's defaults
    epochs: int | None = setting(None, "Training epochs; default: enough for about 120 steps (3 to 20).", above=0,
                                 maximum=MAX_EPOCHS, integer=True)
    lr: float | None = setting(None, "Peak learning rate (one-cycle schedule); default: the kind's, divided by "
                               "sqrt(depth) for a deeper module.", above=0, maximum=MAX_LR)
    batch_size: int = setting(32, "Training batch size.", above=0, maximum=MAX_BATCH, integer=True)
    seed: int = seed_setting()
    max_length: int = setting(DEFAULT_MAX_LENGTH, "Tokens per text; longer texts are truncated.", above=0,
                              maximum=MAX_TOKENS, integer=True)
    # str first: the CLI passes the text through ("auto" or a number); __post_init__ makes numbers ints
    depth: str | int | None = setting(None, "Top transformer layers the module adapts (LoRA, IA3). Default, "
                                      "or 'auto': the bank's (1), unless a module over the base's full depth beats it "
                                      "by more than a point on a tenth of the training texts held out (from 500 "
                                      "texts; costs one more top-layer training, and a full-depth one when the top "
                                      "layer misses over a point). Deeper fits hard tasks, at the cost of add-task "
                                      "time and of routed speed for batches that reach the task.", metavar="N|auto")

    def __post_init__(self) -> None:
        self.params = resolve_params(get_kind(self.kind, "classifier"), self.params)
        self.depth = _depth(self.depth)
        check(self)

    def resolved_epochs(self, n_examples: int) -> int:
        if self.epochs is not None:
            return self.epochs
        steps_per_epoch = -(-n_examples // self.batch_size)
        return max(3, min(20, -(-self.MIN_STEPS // steps_per_epoch)))

    def resolved_lr(self) -> float:
        """The kind's default, divided by sqrt(depth) for a deeper module: it adapts that many layers at once.
        Measured on sst5's validation split at depth 6: 3e-3 -> 46.3 %, 1e-3 -> 48.4 % (test 49.1 -> 50.0 %)."""
        if self.lr is not None:
            return self.lr
        if self.depth == AUTO_DEPTH:
            raise AdapterBankError("the learning rate of depth 'auto' is known once the depth is (classify/depth.py)")
        return get_kind(self.kind).default_lr / (self.depth or 1) ** 0.5


def _depth(value: Any) -> int | str | None:
    """`depth` as given: None, AUTO_DEPTH, or a whole number of layers (an int, or its digits from the CLI)."""
    if isinstance(value, str):
        if value.strip().lower() == AUTO_DEPTH:
            return AUTO_DEPTH
        if not value.strip().isdigit():
            raise AdapterBankError(f"depth must be a whole number of layers or {AUTO_DEPTH!r}, got {value!r}")
        value = int(value)
    if value is not None:
        check_number("depth", value, above=0, maximum=MAX_DEPTH, integer=True)
    return value
