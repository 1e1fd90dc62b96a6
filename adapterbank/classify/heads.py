"""The per-task classification head: a cosine classifier over mean-pooled features.

Its weights start at the class prototypes of the frozen embeddings, so an untrained head already
scores like nearest-class-mean and training only has to improve on that.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

HEAD_FILE = "head.safetensors"


class CosineHead(torch.nn.Module):
    def __init__(self, prototypes: torch.Tensor, scale: float = 20.0):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.nn.functional.normalize(prototypes.float(), dim=-1).clone())
        self.bias = torch.nn.Parameter(torch.zeros(prototypes.shape[0]))
        self.scale = torch.nn.Parameter(torch.tensor(float(scale)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = torch.nn.functional.normalize(features.float(), dim=-1)
        weight = torch.nn.functional.normalize(self.weight, dim=-1)
        return self.scale * features @ weight.T + self.bias

    def save(self, task_dir: Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(task_dir / HEAD_FILE))

    @classmethod
    def load(cls, task_dir: Path) -> "CosineHead":
        state = load_file(str(Path(task_dir) / HEAD_FILE))
        head = cls(state["weight"])
        head.load_state_dict(state)
        return head.eval()


LABELS_FILE = "labels.json"


def export_head(task_dir: Path, out: Path, labels: list[str], max_length: int) -> None:
    """A task's head and label names, for an exported encoder. `labels.json`: {"labels": [...] in head order,
    "max_length": tokens per text, "pooling": "mean"} (what classify/exported.py needs to answer)."""
    import json
    import shutil

    shutil.copyfile(Path(task_dir) / HEAD_FILE, Path(out) / HEAD_FILE)
    payload = {"labels": labels, "max_length": max_length, "pooling": "mean"}
    (Path(out) / LABELS_FILE).write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
