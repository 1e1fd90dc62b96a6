"""What the router keeps of a task: statistics of its texts' features, never the texts themselves.

Per task, `router.safetensors` holds class means and counts, the within-class covariance and the
out-of-scope threshold table: `scope_quantiles`, of the task's held-out distances to its classes
(scope.py), or in banks made before and in causal banks `score_quantiles`, of its training texts'
leave-one-out cosine to its classes.

The covariance is most of the file (2048 x 2048 in a MiniLM bank's kernel space, routing/kernel.py).
It is stored as a factor: its top eigenvectors scaled by the square roots of their eigenvalues, in int8
with one scale a column, as many columns as fit FACTOR_BYTES (at most FACTOR_RANK), plus the rest of the
spectrum spread evenly (0.9 MB a task instead of 8 MB in fp16). The
statistics are rounded the same way in memory as on disk, so an index built at add-task time equals one
rebuilt from the task files. Files written before (fp16 `covariance`) still load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .scope import held_out_quantiles

ROUTER_FILE = "router.safetensors"


def class_statistics(features: torch.Tensor, targets: Sequence[int], n_classes: int,
                     held_out_scope: bool = True) -> dict[str, torch.Tensor]:
    """Class means/counts, within-class covariance, and the out-of-scope table: the held-out distance
    quantiles of scope.py, or (`held_out_scope=False`: causal banks, whose threshold was measured with
    it) the quantiles of the training texts' leave-one-out best cosine to the task's classes."""
    x = features.float()
    rows = torch.as_tensor(list(targets), dtype=torch.long)
    counts = torch.bincount(rows, minlength=n_classes).float()
    sums = torch.zeros(n_classes, x.shape[1]).index_add_(0, rows, x)
    means = sums / counts.clamp_min(1).unsqueeze(1)
    centred = x - means[rows]
    covariance = centred.T @ centred / max(len(x), 1)
    packed = dict(zip(PACKED, pack_covariance(covariance)))
    stats = {"means": means, "counts": counts, **packed, "covariance": unpack_covariance(*packed.values())}
    if held_out_scope:
        return {**stats, "scope_quantiles": held_out_quantiles(x, rows, n_classes)}
    # leave-one-out class means: a text is scored against prototypes that do not contain it
    loo_own = (sums[rows] - x) / (counts[rows] - 1).clamp_min(1).unsqueeze(1)
    cos = torch.nn.functional.normalize(x, dim=-1) @ torch.nn.functional.normalize(means, dim=-1).T
    own = torch.nn.functional.cosine_similarity(x, loo_own, dim=-1)
    cos[torch.arange(len(x)), rows] = torch.where(counts[rows] > 1, own, cos[torch.arange(len(x)), rows])
    return {**stats, "score_quantiles": torch.quantile(cos.max(-1).values, torch.linspace(0, 1, 101))}


PACKED = ("covariance_factor", "covariance_scales", "covariance_tail")  # how the covariance is stored
FACTOR_RANK = 640  # at most this many columns in the stored covariance factor ...
FACTOR_BYTES = 900_000  # ... and at most this many bytes (MiniLM kernel space: 2048 x 439 int8; raw: 1152 x 640)


def pack_covariance(covariance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(factor int8 [d, k], its column scales fp32 [k], the tail [1]) with covariance ~ F F^T + tail * I:
    F = the top-k eigenvectors times the square roots of their eigenvalues, the rest of the spectrum's mass
    spread evenly. A factor keeps the matrix positive semi-definite whatever the rounding (int8 rounding of
    the matrix itself does not, and broke the router on small tasks)."""
    values, vectors = torch.linalg.eigh(covariance.float())  # fp32: half the time of fp64, ample for a rounded factor
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
    k = min(FACTOR_RANK, FACTOR_BYTES // max(len(values), 1), int((values > values[0] * 1e-7).sum()) if len(values) else 0)
    factor = (vectors[:, :k] * values[:k].sqrt()).float()
    scales = factor.abs().amax(0).clamp_min(1e-30) / 127
    tail = values[k:].sum() / max(len(values), 1)
    return torch.round(factor / scales).to(torch.int8), scales, tail.float().view(1)


def unpack_covariance(factor: torch.Tensor, scales: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
    f = factor.float() * scales
    return f @ f.T + tail * torch.eye(len(factor))


def save_statistics(task_dir: Path, stats: dict[str, torch.Tensor]) -> None:
    tensors = {k: v for k, v in stats.items() if k != "covariance"}
    if PACKED[0] not in tensors:  # statistics made elsewhere (a benchmark, an older caller): pack them here
        tensors.update(zip(PACKED, pack_covariance(stats["covariance"])))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(Path(task_dir) / ROUTER_FILE))


def load_factor(task_dir: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Only the stored covariance factor, PACKED's three tensors (what the out-of-scope test needs), not unpacked."""
    with safe_open(str(Path(task_dir) / ROUTER_FILE), framework="pt") as handle:
        return tuple(handle.get_tensor(key) for key in PACKED)  # type: ignore[return-value]


def load_statistics(task_dir: Path) -> dict[str, torch.Tensor]:
    stats = load_file(str(Path(task_dir) / ROUTER_FILE))
    if PACKED[0] in stats:
        stats["covariance"] = unpack_covariance(*(stats[k] for k in PACKED))
    return stats
