"""What the router keeps of a task: statistics of its texts' features, never the texts themselves.

Per task, `router.safetensors` holds class means and counts, the within-class covariance and the
quantiles of the task's own training texts' similarity to its classes (the out-of-scope threshold).

The covariance is most of the file (1152 x 1152 on MiniLM's features). It is stored compactly: the
standard deviations in fp32 and the upper triangle of the correlation matrix in int8 (steps of 1/127),
0.67 MB instead of 2.65 MB in fp16. The router only uses the sum of every task's covariance, where these
rounding errors average out; the statistics are rounded the same way in memory as on disk, so an index
built at add-task time equals one rebuilt from the task files. Files written before (fp16 `covariance`)
still load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

ROUTER_FILE = "router.safetensors"


def class_statistics(features: torch.Tensor, targets: Sequence[int], n_classes: int) -> dict[str, torch.Tensor]:
    """Class means/counts, within-class covariance, and the quantiles of the training texts'
    leave-one-out best cosine to the task's classes."""
    x = features.float()
    rows = torch.as_tensor(list(targets))
    counts = torch.bincount(rows, minlength=n_classes).float()
    sums = torch.zeros(n_classes, x.shape[1]).index_add_(0, rows, x)
    means = sums / counts.clamp_min(1).unsqueeze(1)
    centred = x - means[rows]
    covariance = centred.T @ centred / max(len(x), 1)
    # leave-one-out class means: a text is scored against prototypes that do not contain it
    loo_own = (sums[rows] - x) / (counts[rows] - 1).clamp_min(1).unsqueeze(1)
    cos = torch.nn.functional.normalize(x, dim=-1) @ torch.nn.functional.normalize(means, dim=-1).T
    own = torch.nn.functional.cosine_similarity(x, loo_own, dim=-1)
    cos[torch.arange(len(x)), rows] = torch.where(counts[rows] > 1, own, cos[torch.arange(len(x)), rows])
    quantiles = torch.quantile(cos.max(-1).values, torch.linspace(0, 1, 101))
    return {"means": means, "counts": counts, "covariance": unpack_covariance(*pack_covariance(covariance)),
            "score_quantiles": quantiles}


CORRELATION_STEPS = 127  # int8: a correlation is stored as round(127 * r)


def pack_covariance(covariance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(standard deviations fp32, upper triangle of the correlations as int8, row by row)."""
    cov = covariance.float()
    std = cov.diagonal().clamp_min(0).sqrt()
    outer = std[:, None] * std[None, :]
    correlation = torch.where(outer > 0, cov / outer.clamp_min(1e-30), torch.zeros_like(cov)).clamp(-1, 1)
    rows, cols = torch.triu_indices(len(cov), len(cov))
    return std, torch.round(correlation[rows, cols] * CORRELATION_STEPS).to(torch.int8)


def unpack_covariance(std: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    n = len(std)
    rows, cols = torch.triu_indices(n, n)
    correlation = torch.zeros(n, n)
    correlation[rows, cols] = packed.float() / CORRELATION_STEPS
    correlation = correlation + correlation.T - torch.diag(correlation.diagonal())
    return correlation * std[:, None] * std[None, :]


def save_statistics(task_dir: Path, stats: dict[str, torch.Tensor]) -> None:
    tensors = {k: v for k, v in stats.items() if k != "covariance"}
    tensors["covariance_std"], tensors["covariance_correlation"] = pack_covariance(stats["covariance"])
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(Path(task_dir) / ROUTER_FILE))


def load_statistics(task_dir: Path) -> dict[str, torch.Tensor]:
    stats = load_file(str(Path(task_dir) / ROUTER_FILE))
    if "covariance_correlation" in stats:
        stats["covariance"] = unpack_covariance(stats.pop("covariance_std"), stats.pop("covariance_correlation"))
    return stats
