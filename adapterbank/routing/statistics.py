"""What the router keeps of a task: statistics of its texts' features, never the texts themselves.

Per task, `router.safetensors` holds class means and counts, the within-class covariance (fp16) and the
quantiles of the task's own training texts' similarity to its classes (the out-of-scope threshold).
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
    return {"means": means, "counts": counts, "covariance": covariance.half(), "score_quantiles": quantiles}


def save_statistics(task_dir: Path, stats: dict[str, torch.Tensor]) -> None:
    save_file({k: v.contiguous() for k, v in stats.items()}, str(Path(task_dir) / ROUTER_FILE))


def load_statistics(task_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(task_dir) / ROUTER_FILE))
