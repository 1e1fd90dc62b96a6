"""What the baselines compute (baselines.py registers them): same base model, same training budget,
modules of the same kind as the bank's.

- `joint`: one module trained on every task's data at once (the usual upper bound);
- `seqlora`: one module fine-tuned through the tasks in order, its head growing with the labels
  (shows catastrophic forgetting; named for its usual kind, LoRA, it follows the run's kind);
- `ncm`: the frozen base's mean-pooled embeddings and the nearest class mean (no training at all).

`joint` gives per-task accuracies, the others an accuracy matrix in the same shape as the bank's. Test
texts are scored over the labels seen so far, or over their own task's labels when the task id is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..classify.config import ClassificationConfig
from ..classify.training import (DEFAULT_CACHE_BYTES, LowerStates, TrainedModule, module_features, train_classifier,
                                 trains_on_upper)
from ..core.backbone import SplitEncoder
from ..core.encoding import collate, length_batches, map_batches, mean_pool, pad_id_of, tokenize
from ..core.models import Base
from .scenarios import TaskData


@dataclass
class Setting:
    """What every baseline shares: the tasks in order, the label universe, how texts are scored."""

    tasks: list[TaskData]
    base: Base
    upper_layers: int
    config: ClassificationConfig
    task_given: bool  # task-incremental: score each text over its own task's labels only
    progress: bool = True

    def __post_init__(self):
        self.labels = list(dict.fromkeys(label for task in self.tasks for label in task.labels))
        self.index = {label: i for i, label in enumerate(self.labels)}
        # labels seen after each stage form a prefix of `labels` (they are listed in task order)
        self.seen = [len(dict.fromkeys(label for task in self.tasks[: i + 1] for label in task.labels))
                     for i in range(len(self.tasks))]
        self.device = next(self.base.model.parameters()).device

    def targets(self, data) -> list[int]:
        return [self.index[label] for label in data.targets]

    def own_labels(self, task: int) -> torch.Tensor:
        """Mask over the label universe: the labels of task `task`."""
        keep = torch.zeros(len(self.labels), dtype=torch.bool)
        keep[[self.index[label] for label in self.tasks[task].labels]] = True
        return keep

    def accuracy(self, logits: torch.Tensor, task: int, allowed: int, own_only: bool | None = None) -> float:
        """Accuracy on task `task`'s test texts, over the first `allowed` labels, or over its own labels
        (`own_only`, by default when the task id is given)."""
        scores = logits.float().clone()
        if self.task_given if own_only is None else own_only:
            keep = self.own_labels(task)
        else:
            keep = torch.arange(len(self.labels)) < allowed
        scores[:, ~keep[: scores.shape[1]]] = -torch.inf
        gold = torch.tensor(self.targets(self.tasks[task].test))
        return float((scores.argmax(-1) == gold).float().mean())


class TestStates:
    """Each task's test texts, tokenized once; for kinds trained on the upper layers, also their frozen
    lower pass, computed once and reused by every stage."""

    def __init__(self, setting: Setting):
        base = setting.base
        self.setting = setting
        self.upper = trains_on_upper(setting.config, base.model, setting.upper_layers)
        self.token_ids = [tokenize(base.tokenizer, task.test.texts, setting.config.max_length) for task in setting.tasks]
        if self.upper:
            split = SplitEncoder(base.model, setting.upper_layers)
            self.per_task = [LowerStates(split, base.tokenizer, ids, setting.device, DEFAULT_CACHE_BYTES)
                             for ids in self.token_ids]

    def logits(self, trained: TrainedModule, task: int) -> torch.Tensor:
        rows: list[torch.Tensor | None] = [None] * len(self.token_ids[task])
        split = SplitEncoder(trained.peft_model.base_model.model, self.setting.upper_layers) if self.upper else None
        pad = pad_id_of(self.setting.base.tokenizer)
        with torch.no_grad():
            for batch in length_batches(self.token_ids[task], 64):
                if split is not None:
                    hidden, mask = self.per_task[task].batch(batch)
                    features = mean_pool(split.upper(hidden, mask), mask)
                else:
                    input_ids, mask = collate([self.token_ids[task][i] for i in batch], pad, self.setting.device)
                    features = module_features(trained.peft_model, input_ids, mask)
                for i, row in zip(batch, trained.head(features).cpu()):
                    rows[i] = row
        return torch.stack(rows)


def _train(setting: Setting, data, n_classes: int, description: str, resume: TrainedModule | None = None) -> TrainedModule:
    base = setting.base
    ids = tokenize(base.tokenizer, data.texts, setting.config.max_length)
    return train_classifier(base.model, base.tokenizer, ids, setting.targets(data), n_classes, setting.config,
                            upper_layers=setting.upper_layers, progress=setting.progress, description=description,
                            resume=resume)


def joint(setting: Setting, test: TestStates) -> list[float]:
    """Per-task accuracy of one module trained on the union of every task's training data."""
    from ..data import Dataset

    union = Dataset([t for task in setting.tasks for t in task.train.texts],
                    [y for task in setting.tasks for y in task.train.targets], source="joint")
    trained = _train(setting, union, len(setting.labels), "baseline joint")
    return [setting.accuracy(test.logits(trained, j), j, len(setting.labels)) for j in range(len(setting.tasks))]


def seqlora(setting: Setting, test: TestStates) -> list[list[float | None]]:
    """Accuracy matrix of one LoRA fine-tuned on each task in turn (tasks 0..i+1 measured after stage i)."""
    size = len(setting.tasks)
    matrix: list[list[float | None]] = [[None] * size for _ in range(size)]
    trained = None
    for i, task in enumerate(setting.tasks):
        trained = _train(setting, task.train, setting.seen[i], f"baseline seqlora {i + 1}/{size}", resume=trained)
        for j in range(min(i + 2, size)):
            matrix[i][j] = setting.accuracy(test.logits(trained, j), j, setting.seen[i])
    return matrix


class FrozenEmbeddings:
    """Mean-pooled last-layer embeddings of the frozen base for every task's train and test texts."""

    def __init__(self, setting: Setting):
        base = setting.base

        def embed(texts: Sequence[str]) -> torch.Tensor:
            ids = tokenize(base.tokenizer, texts, setting.config.max_length)
            forward: Callable = lambda input_ids, mask: mean_pool(  # noqa: E731
                base.model(input_ids=input_ids, attention_mask=mask).last_hidden_state, mask)
            return torch.nn.functional.normalize(map_batches(forward, ids, base.tokenizer, setting.device).float(), dim=-1)

        self.train = [embed(task.train.texts) for task in setting.tasks]
        self.test = [embed(task.test.texts) for task in setting.tasks]


def _class_means(setting: Setting, embeddings: FrozenEmbeddings, tasks: Sequence[int]) -> torch.Tensor:
    dim = embeddings.train[0].shape[1]
    sums, counts = torch.zeros(len(setting.labels), dim), torch.zeros(len(setting.labels))
    for j in tasks:
        rows = torch.tensor(setting.targets(setting.tasks[j].train))
        sums.index_add_(0, rows, embeddings.train[j])
        counts += torch.bincount(rows, minlength=len(setting.labels)).float()
    means = torch.nn.functional.normalize(sums / counts.clamp_min(1).unsqueeze(1), dim=-1)
    return means.masked_fill((counts == 0).unsqueeze(1), 0.0)


def ncm(setting: Setting, embeddings: FrozenEmbeddings) -> list[list[float | None]]:
    """Accuracy matrix of the nearest class mean over the labels seen so far (cosine, frozen embeddings)."""
    size = len(setting.tasks)
    matrix: list[list[float | None]] = [[None] * size for _ in range(size)]
    for i in range(size):
        means = _class_means(setting, embeddings, range(i + 1))
        for j in range(min(i + 2, size)):
            logits = embeddings.test[j] @ means.T
            logits[:, setting.seen[i]:] = -torch.inf  # unseen labels: no mean yet
            matrix[i][j] = setting.accuracy(logits, j, setting.seen[i])
    return matrix


def zero_training(setting: Setting, embeddings: FrozenEmbeddings) -> list[float]:
    """Each task's score with no gradient step: the nearest class mean within the task, on the frozen
    base (the reference `b` of forward transfer)."""
    return [setting.accuracy(embeddings.test[j] @ _class_means(setting, embeddings, [j]).T, j, 0, own_only=True)
            for j in range(len(setting.tasks))]

