"""Prompt tuning: learned virtual-token embeddings put before the input, trained and stored by PEFT.

PEFT does not batch different soft prompts together, so inference applies the stored prompt tensor
itself, with exactly PEFT's semantics (prompt before the first token, attention mask of ones over it).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..settings import setting
from .base import Kind, register


@dataclasses.dataclass(frozen=True)
class PromptParams:
    virtual_tokens: int = setting(16, "Prompt tuning: number of virtual tokens.", above=0, maximum=4096, integer=True)


@register
class PromptTuning(Kind):
    name = "prompt"
    summary = "a learned soft prompt before the input (PEFT prompt tuning)"
    peft_type = "PROMPT_TUNING"
    Params = PromptParams
    default_lr = 3e-2
    families = ("classifier", "causal")
    batching = "prefix"
    merges_into_weights = False

    def peft_config(self, model, params: PromptParams, layers=None, causal: bool = False):
        """Soft prompt initialised from randomly sampled vocabulary embeddings (same scale as real tokens)."""
        from peft import PromptTuningConfig, PromptTuningInit, TaskType

        return PromptTuningConfig(task_type=TaskType.CAUSAL_LM if causal else TaskType.FEATURE_EXTRACTION,
                                  num_virtual_tokens=params.virtual_tokens, prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB)

    def hyperparameters(self, config) -> dict:
        return {"virtual_tokens": config.num_virtual_tokens, "init": str(config.prompt_tuning_init.value)}

    def reserved_positions(self, params: PromptParams) -> int:
        return params.virtual_tokens

    def load_prefix(self, task_dir: Path):
        from safetensors.torch import load_file

        return load_file(str(Path(task_dir) / "adapter_model.safetensors"))["prompt_embeddings"]
