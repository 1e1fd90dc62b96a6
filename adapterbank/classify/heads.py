"""Per-task classification heads, in a registry: the head file says which one it is.

- `cosine` (what add-task trains): a cosine classifier over mean-pooled features. Its weights start at
  the class prototypes of the frozen embeddings, so an untrained head already scores like
  nearest-class-mean and training only has to improve on that.
- `bert-pooler` (what `import` brings from a plain PEFT sequence-classification run): BERT's own head,
  tanh(dense(first token)) then a linear layer, so such an adapter answers exactly as it did in
  `BertForSequenceClassification`.

Every head reads one pooling of the upper layers' output; `pooled` computes both once for a batch that
mixes tasks, and `head.read(pooled)` takes the one it needs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..core.encoding import mean_pool

HEAD_FILE = "head.safetensors"
LABELS_FILE = "labels.json"
POOLINGS = ("mean", "first")  # the order of `pooled`'s second axis
HEADS: dict[str, type["Head"]] = {}


def register(cls):
    HEADS[cls.name] = cls
    return cls


def pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, len(POOLINGS), H]: every pooling a head may read, for rows whose heads differ."""
    return torch.stack((mean_pool(hidden, mask), hidden[:, 0]), dim=1)


class Head(torch.nn.Module):
    name = ""
    pooling = "mean"

    def read(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from `pooled` features."""
        return self(features[:, POOLINGS.index(self.pooling)])

    def save(self, task_dir: Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(Path(task_dir) / HEAD_FILE),
                  metadata={"head": self.name})

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> "Head":
        raise NotImplementedError


@register
class CosineHead(Head):
    name = "cosine"

    def __init__(self, prototypes: torch.Tensor, scale: float = 20.0):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.nn.functional.normalize(prototypes.float(), dim=-1).clone())
        self.bias = torch.nn.Parameter(torch.zeros(prototypes.shape[0]))
        self.scale = torch.nn.Parameter(torch.tensor(float(scale)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = torch.nn.functional.normalize(features.float(), dim=-1)
        weight = torch.nn.functional.normalize(self.weight, dim=-1)
        return self.scale * features @ weight.T + self.bias

    @classmethod
    def from_state(cls, state):
        head = cls(state["weight"])
        head.load_state_dict(state)
        return head

    @classmethod
    def load(cls, task_dir: Path) -> "Head":
        return load_head(task_dir)


@register
class BertPoolerHead(Head):
    name = "bert-pooler"
    pooling = "first"

    def __init__(self, hidden: int, classes: int):
        super().__init__()
        self.dense = torch.nn.Linear(hidden, hidden)
        self.classifier = torch.nn.Linear(hidden, classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.tanh(self.dense(features.float())))

    @classmethod
    def from_state(cls, state):
        classes, hidden = state["classifier.weight"].shape
        head = cls(hidden, classes)
        head.load_state_dict({k: v.float() for k, v in state.items()})
        return head


def load_head(task_dir: Path) -> Head:
    """The head in `task_dir`, of the kind its file's metadata names (files from before the registry: cosine)."""
    path = str(Path(task_dir) / HEAD_FILE)
    with safe_open(path, framework="pt") as handle:
        name = (handle.metadata() or {}).get("head", CosineHead.name)
    if name not in HEADS:
        from ..errors import BankError

        raise BankError(f"{path}: a {name!r} head, which this adapterbank version does not know")
    return HEADS[name].from_state(load_file(path)).eval()


def export_head(task_dir: Path, out: Path, labels: list[str], max_length: int) -> None:
    """A task's head and label names, for an exported encoder. `labels.json`: {"labels": [...] in head order,
    "max_length": tokens per text, "pooling": what the head reads} (what classify/exported.py needs)."""
    import json
    import shutil

    shutil.copyfile(Path(task_dir) / HEAD_FILE, Path(out) / HEAD_FILE)
    payload = {"labels": labels, "max_length": max_length, "pooling": load_head(task_dir).pooling}
    (Path(out) / LABELS_FILE).write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
