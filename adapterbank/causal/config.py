"""How a causal-LM domain module is trained (`--objective clm`): one dataclass, each default defined here once."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from ..kinds import DEFAULT_KIND, get_kind, resolve_params
from ..settings import check, setting

CLM_LR = 2e-3  # peak learning rate of domain modules (measured on the continual pre-training benchmark)


@dataclasses.dataclass
class CLMConfig:
    objective: ClassVar[str] = "clm"

    kind: str = setting(DEFAULT_KIND, "Module kind.")
    params: Any = None  # the kind's hyper-parameters (its Params dataclass); None: the kind's defaults
    block_size: int = setting(128, "Tokens per training block (documents are joined with EOS and cut to this length).",
                              minimum=2, integer=True)
    epochs: int = setting(1, "Passes over the blocks.", above=0, integer=True)
    max_steps: int | None = setting(None, "Train exactly this many optimizer steps (overrides epochs).", above=0, integer=True)
    lr: float | None = setting(None, f"Peak learning rate (one-cycle schedule); default {CLM_LR:g}.", above=0)
    batch_size: int = setting(8, "Blocks per training batch.", above=0, integer=True)
    seed: int = setting(0, "Random seed (same seed, same module).")

    def __post_init__(self) -> None:
        self.params = resolve_params(get_kind(self.kind, "causal"), self.params)
        check(self)

    def total_steps(self, n_blocks: int) -> int:
        return self.max_steps or self.epochs * -(-n_blocks // self.batch_size)

    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else CLM_LR
