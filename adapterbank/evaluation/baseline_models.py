"""What the baselines compute (baselines.py registers them): same base model, same training budget,
modules of the same kind as the bank's.

- `joint`: one module trained on every task's data at once (the usual upper bound);
- `seqlora`: one module fine-tuned through the tasks in order, its head growing with the labels
  (shows catastrophic forgetting; named for its usual kind, LoRA, it follows the run's kind);
- `replay`: seqlora with experience replay, a bounded, seeded, class-balanced buffer of earlier tasks'
  examples mixed into each stage's data (the baseline the online-learning literature uses everywhere);
- `ewc`: seqlora with an online EWC penalty (diagonal empirical Fisher, lambda 1,000) on the module's
  and head's parameters;
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


def _train(setting: Setting, data, n_classes: int, description: str, resume: TrainedModule | None = None,
           penalty=None) -> TrainedModule:
    base = setting.base
    ids = tokenize(base.tokenizer, data.texts, setting.config.max_length)
    return train_classifier(base.model, base.tokenizer, ids, setting.targets(data), n_classes, setting.config,
                            upper_layers=setting.upper_layers, progress=setting.progress, description=description,
                            resume=resume, penalty=penalty)


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


DEFAULT_REPLAY_BUFFER = 1000  # examples of earlier tasks kept for replay (a share of each label's, seeded)


def replay(setting: Setting, test: TestStates, buffer_size: int = DEFAULT_REPLAY_BUFFER) -> list[list[float | None]]:
    """seqlora with experience replay: each stage trains on the task's data plus a bounded, seeded,
    class-balanced buffer of earlier tasks' examples (the buffer is refilled after every stage)."""
    import random

    from ..data import Dataset

    size, rng = len(setting.tasks), random.Random(f"replay-{setting.config.seed}")
    matrix: list[list[float | None]] = [[None] * size for _ in range(size)]
    trained, buffer = None, []
    for i, task in enumerate(setting.tasks):
        data = Dataset(task.train.texts + [t for t, _ in buffer], task.train.targets + [y for _, y in buffer], source=task.name)
        trained = _train(setting, data, setting.seen[i], f"baseline replay {i + 1}/{size}", resume=trained)
        for j in range(min(i + 2, size)):
            matrix[i][j] = setting.accuracy(test.logits(trained, j), j, setting.seen[i])
        by_label: dict[str, list[tuple[str, str]]] = {}
        for prior in setting.tasks[: i + 1]:
            for pair in zip(prior.train.texts, prior.train.targets):
                by_label.setdefault(pair[1], []).append(pair)
        per_label = max(1, buffer_size // len(by_label))
        buffer = [pair for pairs in by_label.values() for pair in rng.sample(pairs, min(per_label, len(pairs)))]
    return matrix


EWC_LAMBDA = 1000.0  # weight of the EWC penalty (Kirkpatrick et al. 2017 use 10^2-10^4 on their tasks)


class _EWC:
    """Online EWC: after each stage, the diagonal empirical Fisher of the module's and head's parameters on
    that stage's data (squared gradients of per-batch losses) is added up, and the next stages pay
    lambda/2 * sum F (theta - theta*)^2 for moving them (a head row only once its class exists)."""

    def __init__(self, strength: float):
        self.strength, self.fisher, self.anchor = strength, {}, {}

    @staticmethod
    def _parameters(peft_model, head) -> dict[str, torch.Tensor]:
        named = {f"module.{n}": p for n, p in peft_model.named_parameters() if p.requires_grad}
        return {**named, **{f"head.{n}": p for n, p in head.named_parameters()}}

    def __call__(self, peft_model, head) -> torch.Tensor:
        total = None
        for name, p in self._parameters(peft_model, head).items():
            if name in self.fisher:
                old = self.anchor[name]
                rows = tuple(slice(0, n) for n in old.shape)  # a grown head: only the rows that existed
                term = (self.fisher[name] * (p[rows] - old) ** 2).sum()
                total = term if total is None else total + term
        return 0.5 * self.strength * total if total is not None else torch.zeros(())

    def consolidate(self, setting: Setting, trained: TrainedModule, data) -> None:
        base, model, head = setting.base, trained.peft_model, trained.head
        ids = tokenize(base.tokenizer, data.texts, setting.config.max_length)
        targets = torch.tensor(setting.targets(data), device=setting.device)
        params = self._parameters(model, head)
        fisher = {name: torch.zeros_like(p) for name, p in params.items()}
        batches = length_batches(ids, setting.config.batch_size)
        for batch in batches:
            input_ids, mask = collate([ids[i] for i in batch], pad_id_of(base.tokenizer), setting.device)
            loss = torch.nn.functional.cross_entropy(head(module_features(model, input_ids, mask)), targets[batch])
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for (name, _), grad in zip(params.items(), grads):
                if grad is not None:
                    fisher[name] += grad.detach() ** 2 / len(batches)
        for name, p in params.items():
            old = self.fisher.get(name)
            if old is not None and old.shape != fisher[name].shape:  # a grown head keeps its earlier rows' Fisher
                fisher[name][tuple(slice(0, n) for n in old.shape)] += old
            elif old is not None:
                fisher[name] += old
            self.fisher[name], self.anchor[name] = fisher[name], p.detach().clone()


def ewc(setting: Setting, test: TestStates, strength: float = EWC_LAMBDA) -> list[list[float | None]]:
    """seqlora with an (online) EWC penalty on the module's and head's parameters."""
    size, penalty = len(setting.tasks), _EWC(strength)
    matrix: list[list[float | None]] = [[None] * size for _ in range(size)]
    trained = None
    for i, task in enumerate(setting.tasks):
        trained = _train(setting, task.train, setting.seen[i], f"baseline ewc {i + 1}/{size}", resume=trained,
                         penalty=penalty if i else None)
        for j in range(min(i + 2, size)):
            matrix[i][j] = setting.accuracy(test.logits(trained, j), j, setting.seen[i])
        if i + 1 < size:
            trained.peft_model.train()
            penalty.consolidate(setting, trained, task.train)
            trained.peft_model.eval()
    return matrix


def frozen_embeddings(base: Base, texts: Sequence[str], max_length: int, device) -> torch.Tensor:
    """[len(texts), H] mean-pooled last-layer embeddings of the frozen base, L2-normalised (what NCM compares)."""
    forward: Callable = lambda input_ids, mask: mean_pool(  # noqa: E731
        base.model(input_ids=input_ids, attention_mask=mask).last_hidden_state, mask)
    ids = tokenize(base.tokenizer, texts, max_length)
    return torch.nn.functional.normalize(map_batches(forward, ids, base.tokenizer, device).float(), dim=-1)


class FrozenEmbeddings:
    """Mean-pooled last-layer embeddings of the frozen base for every task's train and test texts."""

    def __init__(self, setting: Setting):
        def embed(texts: Sequence[str]) -> torch.Tensor:
            return frozen_embeddings(setting.base, texts, setting.config.max_length, setting.device)

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

