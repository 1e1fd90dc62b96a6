"""Merging LoRA modules into base weights: a small registry of methods over weight deltas.

Each module's update of a weight is its dense delta `scale * B @ A`, read from the module's saved
safetensors. For every weight any chosen module touches, the methods combine the modules' deltas
into one, which is added to the base weight. The combinations are PEFT's (`peft.utils.merge_utils`:
task arithmetic, TIES, DARE); `svd` is the one PEFT offers only for adapters, written here for dense
deltas: the weighted sum, truncated to its top singular directions.

Merging works on dense deltas rather than re-factorised adapters, so `linear` is exact: merging
one module with weight 1 gives the same weights as PEFT's `merge_and_unload`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import torch
from peft.utils import merge_utils
from safetensors.torch import load_file

from ..errors import AdapterBankError, IntegrityError

DEFAULT_DENSITY = 0.5  # fraction of each delta TIES/DARE keep


def _svd(deltas: list[torch.Tensor], weights: torch.Tensor, density: float, rank: int = 0) -> torch.Tensor:
    summed = merge_utils.task_arithmetic(deltas, weights)
    if summed.dim() != 2 or rank <= 0 or rank >= min(summed.shape):
        return summed
    u, s, vh = torch.linalg.svd(summed.float(), full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "linear": lambda deltas, weights, density, rank=0: merge_utils.task_arithmetic(deltas, weights),
    "ties": lambda deltas, weights, density, rank=0: merge_utils.ties(deltas, weights, density),
    "dare_linear": lambda deltas, weights, density, rank=0: merge_utils.dare_linear(deltas, weights, density),
    "dare_ties": lambda deltas, weights, density, rank=0: merge_utils.dare_ties(deltas, weights, density),
    "svd": _svd,
}


def check_method(method: str, density: float, weights: Sequence[float] | None, n_modules: int) -> None:
    if method not in METHODS:
        raise AdapterBankError(f"unknown merge method {method!r}; choose one of: {', '.join(METHODS)}")
    if not 0 < density <= 1:
        raise AdapterBankError(f"density must be in (0, 1], got {density}")
    if weights is not None and len(weights) != n_modules:
        raise AdapterBankError(f"--weights gives {len(weights)} weight(s) for {n_modules} module(s)")


def lora_deltas(task_dir: Path) -> dict[str, torch.Tensor]:
    """{base parameter name: scale * B @ A} of a PEFT LoRA module directory (safetensors only)."""
    config = json.loads((Path(task_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA":
        raise AdapterBankError(f"{task_dir}: not a LoRA module (peft_type {config.get('peft_type')!r}); only LoRA merges into weights")
    if config.get("use_dora") or config.get("rank_pattern") or config.get("alpha_pattern"):
        raise AdapterBankError(f"{task_dir}: DoRA and per-layer rank/alpha patterns are not supported by merge")
    rank, alpha = config["r"], config["lora_alpha"]
    scale = alpha / rank ** 0.5 if config.get("use_rslora") else alpha / rank
    tensors = load_file(str(Path(task_dir) / "adapter_model.safetensors"))
    deltas = {}
    for key, a in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        prefix = key[: -len(".lora_A.weight")]
        b = tensors.get(prefix + ".lora_B.weight")
        if b is None:
            raise IntegrityError(f"{task_dir}: {key} has no matching lora_B")
        name = prefix.removeprefix("base_model.model.") + ".weight"
        delta = (b.float() @ a.float()) * scale
        deltas[name] = delta.T if config.get("fan_in_fan_out") else delta
    return deltas


@torch.no_grad()
def merge_into(model: torch.nn.Module, modules: Sequence[dict[str, torch.Tensor]], method: str,
               weights: Sequence[float], density: float = DEFAULT_DENSITY, seed: int = 0, rank: int = 0) -> int:
    """Add the combined deltas of `modules` to `model`'s weights in place; returns how many weights changed.

    A module that does not touch a weight contributes a zero delta to it. DARE's random drops are
    seeded, so the same merge gives the same base."""
    params = dict(model.named_parameters())
    names = sorted({name for module in modules for name in module})
    missing = [name for name in names if name not in params]
    if missing:
        raise AdapterBankError(f"the module updates {missing[0]!r}, which this base does not have (a module for another base?)")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        weight_tensor = torch.tensor(list(weights), dtype=torch.float32)
        for name in names:
            target = params[name]
            deltas = [module.get(name, torch.zeros(target.shape)).float() for module in modules]
            if any(d.shape != target.shape for d in deltas):
                raise AdapterBankError(f"the module's update of {name!r} has shape {tuple(deltas[0].shape)}, "
                                       f"the base's weight {tuple(target.shape)} (a module for another base?)")
            target.add_(METHODS[method](deltas, weight_tensor, density, rank=rank).to(target.dtype))
    finally:
        torch.random.set_rng_state(generator_state)
    return len(names)
