"""LoRA modules: low-rank updates of the base's linear layers, trained and stored by PEFT.

On BERT-like encoders the update covers every linear layer of the top `upper_layers` transformer
layers only (see backbone.py for why); elsewhere PEFT's defaults for the architecture, or all linears.
"""

from __future__ import annotations

from peft import LoraConfig, TaskType
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

DEFAULT_LR = 3e-3
ENCODER_LAYER_TARGETS = ["query", "key", "value", "dense"]  # attention q/k/v, attention output, FFN in and out


def make_config(model, rank: int = 8, upper_layers: list[int] | None = None, causal: bool = False, **_) -> LoraConfig:
    """`causal`: a causal-LM module (PEFT task type CAUSAL_LM, so PEFT, vLLM and LoRAX serve it as one)."""
    if upper_layers:
        targets, extra = ENCODER_LAYER_TARGETS, {"layers_to_transform": list(upper_layers), "layers_pattern": "layer"}
    else:
        model_type = getattr(model.config, "model_type", None)
        targets = None if model_type in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING else "all-linear"
        extra = {}
    task_type = TaskType.CAUSAL_LM if causal else TaskType.FEATURE_EXTRACTION
    return LoraConfig(task_type=task_type, r=rank, lora_alpha=2 * rank, lora_dropout=0.05,
                      target_modules=targets, **extra)


def hyperparameters(config: LoraConfig) -> dict:
    return {"rank": config.r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
            "target_modules": sorted(config.target_modules) if config.target_modules else None,
            "layers": list(config.layers_to_transform) if config.layers_to_transform is not None else None}
