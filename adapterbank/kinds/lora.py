"""LoRA: low-rank updates `scale * B @ A` of the base's linear layers, trained and stored by PEFT.

On BERT-like encoders the update covers every linear layer of the top transformer layers only (see
core/backbone.py for why); on causal LMs PEFT's default targets for the architecture (else all linears).
This module holds the one reader of PEFT's saved LoRA factors: inference applies them per row, merging
turns them into dense weight updates.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import NamedTuple

from ..errors import BankError, IntegrityError
from ..settings import setting
from .base import Kind, register

ENCODER_LAYER_TARGETS = ["query", "key", "value", "dense"]  # attention q/k/v, attention output, FFN in and out
DROPOUT = 0.05
_PEFT_PREFIX = "base_model.model."


@dataclasses.dataclass(frozen=True)
class LoraParams:
    rank: int = setting(8, "LoRA rank (alpha is twice the rank).", above=0, maximum=4096, integer=True)


class Factors(NamedTuple):
    a: "object"  # torch.Tensor [r, in]
    b: "object"  # torch.Tensor [out, r]
    scale: float


def read_factors(task_dir: Path) -> tuple[dict[str, Factors], dict]:
    """({linear module path: (A, B, scale)}, adapter_config) of a PEFT LoRA directory (safetensors only).
    `fan_in_fan_out` modules store B @ A transposed; `weight_deltas` honours it."""
    from safetensors.torch import load_file

    task_dir = Path(task_dir)
    config = json.loads((task_dir / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA":
        raise BankError(f"{task_dir / 'adapter_config.json'}: not a LoRA module (peft_type {config.get('peft_type')!r})")
    if config.get("use_dora") or config.get("rank_pattern") or config.get("alpha_pattern"):
        raise BankError(f"{task_dir / 'adapter_config.json'}: DoRA and per-layer rank/alpha patterns are not supported")
    rank, alpha = config["r"], config["lora_alpha"]
    scale = alpha / rank ** 0.5 if config.get("use_rslora") else alpha / rank
    tensors = load_file(str(task_dir / "adapter_model.safetensors"))
    factors = {}
    for key, a in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        prefix = key[: -len(".lora_A.weight")]
        b = tensors.get(prefix + ".lora_B.weight")
        if b is None:
            raise IntegrityError(f"{task_dir / 'adapter_model.safetensors'}: {key} has no matching lora_B")
        factors[prefix.removeprefix(_PEFT_PREFIX)] = Factors(a.float(), b.float(), scale)
    return factors, config


@register
class LoRA(Kind):
    name = "lora"
    summary = "low-rank updates of linear layers (PEFT LoRA)"
    peft_type = "LORA"
    Params = LoraParams
    default_lr = 3e-3
    families = ("classifier", "causal")
    batching = "upper"
    merges_into_weights = True
    dense_deltas = True

    def peft_config(self, model, params: LoraParams, layers: list[int] | None = None, causal: bool = False):
        from peft import LoraConfig, TaskType
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

        if layers:
            targets, extra = ENCODER_LAYER_TARGETS, {"layers_to_transform": list(layers), "layers_pattern": "layer"}
        else:
            model_type = getattr(model.config, "model_type", None)
            targets = None if model_type in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING else "all-linear"
            extra = {}
        task_type = TaskType.CAUSAL_LM if causal else TaskType.FEATURE_EXTRACTION
        return LoraConfig(task_type=task_type, r=params.rank, lora_alpha=2 * params.rank, lora_dropout=DROPOUT,
                          target_modules=targets, **extra)

    def hyperparameters(self, config) -> dict:
        return {"rank": config.r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
                "target_modules": sorted(config.target_modules) if config.target_modules else None,
                "layers": list(config.layers_to_transform) if config.layers_to_transform is not None else None}

    def load_updates(self, task_dir: Path, layers: set[int]) -> dict:
        """{path: (A, scale * B)}: B pre-scaled so a row's update is two small products."""
        factors, _ = read_factors(task_dir)
        updates = {}
        for path, f in factors.items():
            parts = path.split(".")
            layer = int(parts[parts.index("layer") + 1]) if "layer" in parts else -1
            if layer not in layers:
                raise BankError(f"{task_dir}: module adapts {path}, outside the bank's upper layers {sorted(layers)}")
            updates[path] = (f.a, f.b * f.scale)
        return updates

    def row_update(self, tensors, linear, x, out, rows):
        a, b = tensors
        return (x @ a.T) @ b.T

    def weight_deltas(self, task_dir: Path) -> dict:
        factors, config = read_factors(task_dir)
        deltas = {}
        for path, f in factors.items():
            delta = (f.b @ f.a) * f.scale
            deltas[path + ".weight"] = delta.T if config.get("fan_in_fan_out") else delta
        return deltas
