"""Choosing which task's module answers a text, from statistics stored per task at add-task time.

The router sees only L2-normalised frozen-base embeddings and per-class prototypes (never raw text).
`Router` is the interface the bank relies on; `PrototypeRouter` scores a task by its best class
prototype (cosine) and turns the scores into probabilities with a softmax at a fixed temperature.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import load_file, save_file

ROUTER_FILE = "router.safetensors"
DEFAULT_TEMPERATURE = 0.05


def class_statistics(embeddings: torch.Tensor, targets: list[str], labels: list[str]) -> dict[str, torch.Tensor]:
    """Per-class mean of normalised embeddings and class counts, in `labels` order."""
    index = {label: i for i, label in enumerate(labels)}
    rows = torch.tensor([index[t] for t in targets])
    sums = torch.zeros(len(labels), embeddings.shape[1]).index_add_(0, rows, embeddings.float())
    counts = torch.bincount(rows, minlength=len(labels)).float()
    return {"prototypes": sums / counts.unsqueeze(1), "counts": counts}


def save_statistics(task_dir: Path, stats: dict[str, torch.Tensor]) -> None:
    save_file({k: v.contiguous() for k, v in stats.items()}, str(task_dir / ROUTER_FILE))


def load_statistics(task_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(task_dir) / ROUTER_FILE))


@dataclass
class Route:
    """For one text: candidate tasks best first, with the router's probability for each."""

    tasks: list[str]
    probabilities: list[float]


class Router(Protocol):
    def add_task(self, name: str, stats: dict[str, torch.Tensor]) -> None: ...

    def route(self, embeddings: torch.Tensor, top_k: int = 3) -> list[Route]: ...


class PrototypeRouter:
    """Nearest class prototype (cosine); a task's score is its best class's similarity."""

    def __init__(self, temperature: float = DEFAULT_TEMPERATURE):
        self.temperature = temperature
        self.task_names: list[str] = []
        self._prototypes: list[torch.Tensor] = []
        self._owners: list[torch.Tensor] = []
        self._matrix: torch.Tensor | None = None
        self._owner_index: torch.Tensor | None = None

    def add_task(self, name: str, stats: dict[str, torch.Tensor]) -> None:
        prototypes = torch.nn.functional.normalize(stats["prototypes"].float(), dim=-1)
        self._owners.append(torch.full((prototypes.shape[0],), len(self.task_names), dtype=torch.long))
        self._prototypes.append(prototypes)
        self.task_names.append(name)
        self._matrix = None

    def route(self, embeddings: torch.Tensor, top_k: int = 3) -> list[Route]:
        if not self.task_names:
            return [Route([], []) for _ in range(embeddings.shape[0])]
        if self._matrix is None:
            self._matrix = torch.cat(self._prototypes)
            self._owner_index = torch.cat(self._owners)
        similarity = torch.nn.functional.normalize(embeddings.float(), dim=-1) @ self._matrix.T
        per_task = torch.full((embeddings.shape[0], len(self.task_names)), -2.0)
        per_task.scatter_reduce_(1, self._owner_index.expand_as(similarity), similarity, reduce="amax")
        probabilities = torch.softmax(per_task / self.temperature, dim=-1)
        k = min(top_k, len(self.task_names))
        top_p, top_i = probabilities.topk(k, dim=-1)
        return [
            Route([self.task_names[i] for i in idx.tolist()], [round(p, 6) for p in ps.tolist()])
            for ps, idx in zip(top_p, top_i)
        ]
