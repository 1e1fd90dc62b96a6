"""How causal-LM modules are trained (`--objective clm`: domain text; `--objective sft`: instructions and
chats) and how generation decodes: one dataclass each, each default defined here once."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from ..kinds import DEFAULT_KIND, get_kind, resolve_params
from ..settings import MAX_BATCH, MAX_EPOCHS, MAX_LR, MAX_STEPS, MAX_TOKENS, check, seed_setting, setting

CLM_LR = 2e-3  # peak learning rate of domain modules (measured on the continual pre-training benchmark)
SFT_LR_SCALE = 1 / 3  # sft: a third of the kind's classification rate (responses are whole token sequences, not one label)


@dataclasses.dataclass
class CLMConfig:
    objective: ClassVar[str] = "clm"
    chat_layout: ClassVar[bool] = False  # its modules continue prompts as written

    kind: str = setting(DEFAULT_KIND, "Module kind.")
    params: Any = None  # the kind's hyper-parameters (its Params dataclass); None: the kind's defaults
    block_size: int = setting(128, "Tokens per training block (documents are joined with EOS and cut to this length).",
                              minimum=2, maximum=MAX_TOKENS, integer=True)
    epochs: int = setting(1, "Passes over the blocks.", above=0, maximum=MAX_EPOCHS, integer=True)
    max_steps: int | None = setting(None, "Train exactly this many optimizer steps (overrides epochs).", above=0,
                                    maximum=MAX_STEPS, integer=True)
    lr: float | None = setting(None, f"Peak learning rate (one-cycle schedule); default {CLM_LR:g}.", above=0, maximum=MAX_LR)
    batch_size: int = setting(8, "Blocks per training batch.", above=0, maximum=MAX_BATCH, integer=True)
    seed: int = seed_setting()

    def __post_init__(self) -> None:
        self.params = resolve_params(get_kind(self.kind, "causal"), self.params)
        check(self)

    def total_steps(self, n_blocks: int) -> int:
        return self.max_steps or self.epochs * -(-n_blocks // self.batch_size)

    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else CLM_LR


@dataclasses.dataclass
class SFTConfig:
    """Instruction tuning: loss on the response tokens only, length-bucketed batches (no padding waste)."""

    objective: ClassVar[str] = "sft"
    chat_layout: ClassVar[bool] = True  # its modules are served prompts in the chat layout they were trained on
    MIN_STEPS: ClassVar[int] = 120  # default epochs give about this many optimizer steps (2 to 10 epochs)

    kind: str = setting(DEFAULT_KIND, "Module kind.")
    params: Any = None  # the kind's hyper-parameters (its Params dataclass); None: the kind's defaults
    epochs: int | None = setting(None, "Passes over the examples; default: enough for about 120 steps (2 to 10).", above=0,
                                 maximum=MAX_EPOCHS, integer=True)
    max_steps: int | None = setting(None, "Train exactly this many optimizer steps (overrides epochs).", above=0,
                                    maximum=MAX_STEPS, integer=True)
    lr: float | None = setting(None, "Peak learning rate (one-cycle schedule); default: a third of the kind's.", above=0,
                               maximum=MAX_LR)
    batch_size: int = setting(8, "Examples per training batch.", above=0, maximum=MAX_BATCH, integer=True)
    seed: int = seed_setting()

    def __post_init__(self) -> None:
        self.params = resolve_params(get_kind(self.kind, "causal"), self.params)
        check(self)

    def resolved_epochs(self, n_examples: int) -> int:
        if self.epochs is not None:
            return self.epochs
        steps_per_epoch = -(-n_examples // self.batch_size)
        return max(2, min(10, -(-self.MIN_STEPS // steps_per_epoch)))

    def total_steps(self, n_examples: int) -> int:
        return self.max_steps or self.resolved_epochs(n_examples) * -(-n_examples // self.batch_size)

    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else get_kind(self.kind).default_lr * SFT_LR_SCALE


@dataclasses.dataclass
class GenerationSettings:
    """How `generate` decodes; the bounds are checked for the Python API and the CLI alike."""

    max_new_tokens: int = setting(64, "Tokens to generate per prompt.", minimum=1, maximum=MAX_TOKENS, integer=True)
    temperature: float = setting(1.0, "Sampling temperature (with --sample).", above=0, maximum=100)
    top_p: float = setting(1.0, "Nucleus sampling: the probability mass kept (with --sample).", above=0, maximum=1)
    seed: int = seed_setting("Sampling seed (same seed, same text).")
    batch_size: int = setting(16, "Prompts per generation batch (rows may use different modules).", minimum=1,
                              maximum=MAX_BATCH, integer=True)

    def __post_init__(self) -> None:
        check(self)
