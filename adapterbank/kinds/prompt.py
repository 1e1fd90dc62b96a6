"""Prompt tuning: learned virtual-token embeddings prepended to the input, trained and stored by PEFT.

PEFT does not batch different soft prompts together, so inference applies the stored prompt tensor here,
with exactly PEFT's semantics (prompt before the first token, attention mask of ones over it).
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PromptTuningConfig, PromptTuningInit, TaskType
from safetensors.torch import load_file

DEFAULT_LR = 3e-2
DEFAULT_VIRTUAL_TOKENS = 16
WEIGHTS = "adapter_model.safetensors"


def make_config(model, virtual_tokens: int = DEFAULT_VIRTUAL_TOKENS, **_) -> PromptTuningConfig:
    """Soft prompt initialised from randomly sampled vocabulary embeddings (same scale as real tokens)."""
    return PromptTuningConfig(
        task_type=TaskType.FEATURE_EXTRACTION,
        num_virtual_tokens=virtual_tokens,
        prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB,
    )


def hyperparameters(config: PromptTuningConfig) -> dict:
    return {"virtual_tokens": config.num_virtual_tokens, "init": str(config.prompt_tuning_init.value)}


def load_prompt(task_dir: Path) -> torch.Tensor:
    """The [virtual_tokens, hidden] prompt matrix PEFT saved."""
    return load_file(str(Path(task_dir) / WEIGHTS))["prompt_embeddings"]


def encode_with_prompts(model, prompts: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hidden states of the real tokens after running `model` with row i's prompt `prompts[i]`
    ([B, virtual, hidden]) prepended: different tasks' prompts share one batch."""
    embeddings = model.get_input_embeddings()(input_ids)
    batch, virtual = input_ids.shape[0], prompts.shape[1]
    prefix = prompts.to(embeddings.dtype)
    full_mask = torch.cat([torch.ones(batch, virtual, dtype=mask.dtype, device=mask.device), mask], dim=1)
    hidden = model(inputs_embeds=torch.cat([prefix, embeddings], dim=1), attention_mask=full_mask).last_hidden_state
    return hidden[:, virtual:]
