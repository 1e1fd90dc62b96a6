"""Merging modules into base weights: a registry of merge methods over dense weight updates.

Each module's update of a weight is a dense delta (for LoRA `scale * B @ A`: kinds/lora.py). For every
weight any chosen module touches, a method combines the modules' deltas into one, which is added to
the base weight. Each method is one small function registered with the parameters it takes; the
combinations are PEFT's (`peft.utils.merge_utils`: task arithmetic, TIES, DARE); `svd` is the one PEFT
offers only for adapters, written here for dense deltas: the weighted sum, truncated to its top
singular directions.

Merging works on dense deltas rather than re-factorised adapters, so `linear` is exact: merging one
module with weight 1 gives the same weights as PEFT's `merge_and_unload`.

Importing this module is cheap (torch and PEFT load when a merge runs): the CLI lists the methods.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..errors import AdapterBankError, BaseMismatchError
from ..settings import check, setting

if TYPE_CHECKING:
    import torch


@dataclasses.dataclass
class MergeParams:
    """Every parameter a merge method can declare (a method takes only those it declares)."""

    density: float | None = setting(0.5, "ties / dare: fraction of each update kept.", above=0, maximum=1)
    svd_rank: int | None = setting(None, "svd: rank of the merged update; default: the largest module rank.",
                                   above=0, integer=True)


@dataclasses.dataclass(frozen=True)
class MergeMethod:
    name: str
    summary: str
    params: tuple[str, ...]
    random: bool  # uses the merge's seed
    combine: Callable[..., Any]


MERGE_METHODS: dict[str, MergeMethod] = {}


def merge_method(name: str, summary: str, params: tuple[str, ...] = (), random: bool = False):
    def register(combine: Callable[..., Any]) -> Callable[..., Any]:
        MERGE_METHODS[name] = MergeMethod(name, summary, params, random, combine)
        return combine
    return register


@merge_method("linear", "weighted sum of the updates (task arithmetic)")
def _linear(deltas, weights):
    from peft.utils import merge_utils

    return merge_utils.task_arithmetic(deltas, weights)


@merge_method("ties", "trim each update to its largest entries, elect signs, disjoint mean", ("density",))
def _ties(deltas, weights, density):
    from peft.utils import merge_utils

    return merge_utils.ties(deltas, weights, density)


@merge_method("dare_linear", "drop entries at random and rescale, then sum", ("density",), random=True)
def _dare_linear(deltas, weights, density):
    from peft.utils import merge_utils

    return merge_utils.dare_linear(deltas, weights, density)


@merge_method("dare_ties", "drop entries at random and rescale, then TIES", ("density",), random=True)
def _dare_ties(deltas, weights, density):
    from peft.utils import merge_utils

    return merge_utils.dare_ties(deltas, weights, density)


@merge_method("svd", "weighted sum truncated to its top singular directions", ("svd_rank",))
def _svd(deltas, weights, svd_rank):
    import torch
    from peft.utils import merge_utils

    summed = merge_utils.task_arithmetic(deltas, weights)
    if summed.dim() != 2 or svd_rank <= 0 or svd_rank >= min(summed.shape):
        return summed
    u, s, vh = torch.linalg.svd(summed.float(), full_matrices=False)
    return (u[:, :svd_rank] * s[:svd_rank]) @ vh[:svd_rank]


def method_options(method: str, **given: Any) -> dict[str, Any]:
    """The parameters `method` declares, from `given` (None: the default), validated; a parameter the
    method does not take is refused rather than silently ignored."""
    if method not in MERGE_METHODS:
        raise AdapterBankError(f"unknown merge method {method!r}; choose one of: {', '.join(MERGE_METHODS)}")
    declared = MERGE_METHODS[method].params
    for name, value in given.items():
        if value is not None and name not in declared:
            raise AdapterBankError(f"--{name.replace('_', '-')} does not apply to merge method {method} "
                                   f"(it takes: {', '.join(declared) or 'weights only'})")
    params = check(MergeParams(**{k: v for k, v in given.items() if v is not None}))
    return {name: getattr(params, name) for name in declared}


def merge_into(model: "torch.nn.Module", modules: Sequence[dict[str, "torch.Tensor"]], method: str,
               weights: Sequence[float], seed: int = 0, **options: Any) -> int:
    """Add the combined deltas of `modules` to `model`'s weights in place; returns how many weights changed.

    A module that does not touch a weight contributes a zero delta to it. Random methods are seeded
    (`seed`), so the same merge gives the same base."""
    import torch

    combine = MERGE_METHODS[method].combine
    params = dict(model.named_parameters())
    names = sorted({name for module in modules for name in module})
    missing = [name for name in names if name not in params]
    if missing:
        raise AdapterBankError(f"the module updates {missing[0]!r}, which this base does not have (a module for another base?)")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with torch.no_grad():
            weight_tensor = torch.tensor(list(weights), dtype=torch.float32)
            for name in names:
                target = params[name]
                deltas = [module.get(name, torch.zeros(target.shape)).float() for module in modules]
                if any(d.shape != target.shape for d in deltas):
                    raise AdapterBankError(f"the module's update of {name!r} has shape {tuple(deltas[0].shape)}, "
                                           f"the base's weight {tuple(target.shape)} (a module for another base?)")
                # combined on the CPU (the same seeded drops on any device), added where the base lives
                target.add_(combine(deltas, weight_tensor, **options).to(device=target.device, dtype=target.dtype))
    finally:
        torch.random.set_rng_state(generator_state)
    return len(names)


def check_mergeable(infos: Sequence, version: str, contained: dict[str, str], retarget: bool) -> None:
    """Refuse a module already in the current base (`contained`: module id -> version it went into), one
    whose update is not a dense weight change, or one trained on another version unless `retarget`."""
    from ..kinds import get_kind

    for info in infos:
        if info.record.get("id") in contained:
            raise AdapterBankError(f"task {info.name!r} is already in the current base {version} (merged into "
                                   f"{contained[info.record['id']]}): merging it again would add its update twice")
        if info.kind is None or not get_kind(info.kind).dense_deltas:
            raise AdapterBankError(f"task {info.name!r} is a {info.kind or 'router-only'} task: only modules whose "
                                   "update is a dense weight change (LoRA) merge into the base")
        trained_on = info.record["base"]["version"]
        if trained_on != version and not retarget:
            raise BaseMismatchError(f"task {info.name!r} was trained on base {trained_on}, the current base is {version}: "
                                    "retrain it on the current base (add-task) or pass --retarget to merge it anyway")
