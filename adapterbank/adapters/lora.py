"""LoRA modules: low-rank updates on the base's attention weights, trained and stored by PEFT."""

from __future__ import annotations

from peft import LoraConfig, TaskType
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

DEFAULT_LR = 2e-3


def make_config(model, rank: int = 8, **_) -> LoraConfig:
    """LoRA on PEFT's default target layers for this architecture (query/value for BERT), else all linears."""
    model_type = getattr(model.config, "model_type", None)
    targets = None if model_type in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING else "all-linear"
    return LoraConfig(
        task_type=TaskType.FEATURE_EXTRACTION,
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.05,
        target_modules=targets,
    )


def hyperparameters(config: LoraConfig) -> dict:
    return {"rank": config.r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
            "target_modules": sorted(config.target_modules) if config.target_modules else None}
