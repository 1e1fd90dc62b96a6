"""AdapterBank: the one object users touch. Create/open a bank, add tasks, predict without task ids.

torch, transformers and PEFT are imported inside the methods that train or predict, so listing,
showing and removing tasks start in a fraction of a second.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from . import __version__
from .data import Dataset, load_dataset
from .errors import AdapterBankError, BankError, BaseMismatchError, DataError
from .models import DEFAULT_BASE, DEFAULT_MAX_LENGTH, Base, load_base, resolve_device
from .registry import Registry


@dataclass
class Prediction:
    """A task-agnostic answer: the label, the task whose module gave it, and a score in [0, 1].

    `score` is the router's probability for `task` times the module's probability for `label`;
    `candidates` lists the tasks the router considered, best first, with its probability for each.
    `label`/`task` are typed optional for out-of-scope answers; today every text goes to its nearest task.
    """

    label: str | None
    task: str | None
    score: float
    candidates: list[tuple[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"label": self.label, "task": self.task, "score": self.score,
                "candidates": [{"task": t, "probability": p} for t, p in self.candidates]}


@dataclass
class TaskInfo:
    """What the bank knows about one task (the contents of its task.json, plus where it lives)."""

    name: str
    path: Path
    record: dict

    @property
    def kind(self) -> str | None:
        return self.record.get("kind")

    @property
    def labels(self) -> list[str]:
        return list(self.record.get("labels", []))

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())


DataLike = str | os.PathLike | Dataset


class AdapterBank:
    """A frozen base model plus one small module per task, stored under one directory."""

    def __init__(self, registry: Registry, device: str = "auto", base_override: str | None = None):
        self.registry = registry
        self._device_spec = device
        self._base_spec = base_override
        self._base: Base | None = None
        self._router = None  # routing.PrototypeRouter, built on first predict
        self._runner = None  # inference.ModuleRunner, built on first predict
        self._synced: dict[str, str] = {}  # task name -> task id the router and runner were built for

    # -- lifecycle ------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, base: str = DEFAULT_BASE, device: str = "auto") -> "AdapterBank":
        """Make a new bank at `path` (must not exist, or be empty) over `base` (hub id, local dir, or `minilm`)."""
        Registry.ensure_creatable(path)  # checked before the (slow) model load; nothing is written until both pass
        loaded = load_base(base, resolve_device(device))
        manifest = {
            "adapterbank_version": __version__,
            "base": {"id": loaded.model_id, "fingerprint": loaded.fingerprint,
                     "model_type": getattr(loaded.model.config, "model_type", None),
                     "hidden_size": loaded.model.config.hidden_size},
            "router": {"method": "prototype", "encoder": "base-mean-pool"},
        }
        bank = cls(Registry.create(path, manifest), device=device)
        bank._base = loaded
        return bank

    @classmethod
    def open(cls, path: str | os.PathLike, base: str | None = None, device: str = "auto", lazy: bool = False) -> "AdapterBank":
        """Open an existing bank. The base is loaded and checked against the recorded fingerprint
        now, or on first use with `lazy=True` (for listing tasks without loading a model).
        `base` points at another copy of the same model (e.g. moved directory); a different model is refused."""
        bank = cls(Registry.open(path), device=device, base_override=base)
        if not lazy:
            bank.base  # noqa: B018 - load and verify now
        return bank

    @property
    def path(self) -> Path:
        return self.registry.root

    @functools.cached_property
    def device(self):
        """The torch device modules run on (resolved from `device=` when first needed)."""
        return resolve_device(self._device_spec)

    @property
    def base_id(self) -> str:
        return self.registry.manifest["base"]["id"]

    @property
    def base(self) -> Base:
        """The frozen base model, loaded on first use and verified against bank.json's fingerprint."""
        if self._base is None:
            spec = self._base_spec or self.base_id
            loaded = load_base(spec, self.device)
            expected = self.registry.manifest["base"].get("fingerprint")
            if loaded.fingerprint != expected:
                raise BaseMismatchError(
                    f"base model {spec!r} does not match the bank's base {self.base_id!r} "
                    f"(fingerprint {loaded.fingerprint[:19]} != {str(expected)[:19]}); "
                    "a bank's modules only work on the exact base they were trained on"
                )
            self._base = loaded
        return self._base

    # -- tasks ----------------------------------------------------------------------------------
    def tasks(self) -> list[TaskInfo]:
        return [TaskInfo(name, self.registry.tasks_dir / name, record) for name, record in self.registry.read_tasks().items()]

    def task(self, name: str) -> TaskInfo:
        directory = self.registry.task_dir(name)
        return TaskInfo(name, directory, self.registry.read_task(name))

    def remove_task(self, name: str) -> None:
        self.registry.remove_task(name)

    def add_task(
        self,
        name: str,
        train: DataLike,
        eval: DataLike | None = None,  # noqa: A002 - matches the CLI's --eval
        kind: str = "lora",
        rank: int = 8,
        virtual_tokens: int = 16,
        epochs: int | None = None,
        lr: float | None = None,
        batch_size: int = 32,
        seed: int = 0,
        max_length: int = DEFAULT_MAX_LENGTH,
        progress: bool = True,
    ) -> TaskInfo:
        """Train a module for a classification task and store it; earlier tasks are never touched.

        A task with a single label gets no module or head (there is nothing to discriminate): the
        router alone decides when its texts are meant, and predictions return its one label.
        """
        from .adapters import check_kind

        self.registry.ensure_new_name(name)
        check_kind(kind)
        _check_positive(rank=rank, virtual_tokens=virtual_tokens, batch_size=batch_size, max_length=max_length,
                        epochs=epochs, lr=lr)
        train_set = _as_dataset(train)
        eval_set = _as_dataset(eval) if eval is not None else None
        labels = train_set.labels
        if eval_set is not None:
            unknown = sorted(set(eval_set.labels) - set(labels))
            if unknown:
                raise DataError(f"{eval_set.source}: labels not in the training data: {', '.join(unknown[:5])}")
        from .encoding import frozen_embeddings, tokenize  # heavy (torch, PEFT): only once the input is valid
        from .routing import class_statistics, save_statistics
        from .training import TrainConfig, train_classifier

        base = self.base
        positions = getattr(base.model.config, "max_position_embeddings", None)
        reserved = virtual_tokens if kind == "prompt" else 0
        if positions is not None and max_length + reserved > positions:
            max_length = positions - reserved  # the soft prompt occupies positions too
        config = TrainConfig(kind=kind, rank=rank, virtual_tokens=virtual_tokens, epochs=epochs, lr=lr,
                             batch_size=batch_size, seed=seed, max_length=max_length)
        started = time.perf_counter()
        token_ids = tokenize(base.tokenizer, train_set.texts, max_length)
        embeddings = frozen_embeddings(base.model, base.tokenizer, token_ids)
        stats = class_statistics(embeddings, train_set.targets, labels)
        record = {"objective": "classification", "labels": labels, "kind": None, "adapterbank_version": __version__,
                  "base": {"id": self.base_id, "fingerprint": base.fingerprint},
                  "data": {"train_fingerprint": train_set.fingerprint(), "train_examples": len(train_set),
                           "train_source": train_set.source}}
        trained = None
        if len(labels) > 1:
            index = {label: i for i, label in enumerate(labels)}
            trained = train_classifier(base.model, base.tokenizer, token_ids, [index[t] for t in train_set.targets],
                                       stats["prototypes"], config, progress=progress, description=f"add-task {name}")
            record.update(kind=kind, hyperparameters=trained.hyperparameters, metrics=dict(trained.metrics))
            if eval_set is not None:
                record["metrics"]["eval_accuracy"] = _accuracy(trained, base.tokenizer, eval_set, labels, max_length)
                record["data"].update(eval_fingerprint=eval_set.fingerprint(), eval_examples=len(eval_set))
        else:
            record["hyperparameters"] = {"max_length": max_length}
            record["metrics"] = {"note": "single label: no module trained, the router alone selects this task"}
        record["metrics"]["add_task_seconds"] = round(time.perf_counter() - started, 3)
        with self.registry.stage_task(name, record) as staging:
            if trained is not None:
                trained.peft_model.save_pretrained(str(staging))
                (staging / "README.md").unlink(missing_ok=True)  # PEFT's model card: only JSON + safetensors here
                trained.head.save(staging)
            save_statistics(staging, stats)
        return self.task(name)

    # -- inference ------------------------------------------------------------------------------
    def predict(self, texts: Sequence[str], top_k: int = 3, batch_size: int = 64, progress: bool = False) -> list[Prediction]:
        """Label each text over every label of every task, without being told the task."""
        import torch
        from tqdm.auto import tqdm

        from .encoding import collate, length_batches, pad_id_of, tokenize

        if isinstance(texts, str):
            texts = [texts]
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise DataError(f"text #{i + 1}: expected a string, got {type(text).__name__}")
        records = {info.name: info for info in self.tasks()}
        if not records:
            raise BankError(f"bank {self.path} has no tasks yet; add one with `adapterbank add-task`")
        if not texts:
            return []
        base = self.base
        router, runner = self._sync(records)
        max_length = max(info.record.get("hyperparameters", {}).get("max_length", DEFAULT_MAX_LENGTH) for info in records.values())
        token_ids = tokenize(base.tokenizer, texts, max_length)
        results: list[Prediction | None] = [None] * len(texts)
        for batch in tqdm(length_batches(token_ids, batch_size), desc="predict", unit="batch", disable=not progress, leave=False):
            input_ids, mask = collate([token_ids[i] for i in batch], pad_id_of(base.tokenizer), self.device)
            routes = router.route(runner.frozen_features(input_ids, mask).cpu(), top_k=top_k)
            groups: dict[str, list[int]] = {}
            for row, route in enumerate(routes):
                groups.setdefault(route.tasks[0], []).append(row)
            for task_name, rows in groups.items():
                info = records[task_name]
                if info.kind is None:
                    best_p, best_i = torch.ones(len(rows)), torch.zeros(len(rows), dtype=torch.long)
                else:
                    runner.load(task_name, info.path, info.kind)
                    probabilities = runner.class_probabilities(task_name, input_ids[rows], mask[rows]).cpu()
                    best_p, best_i = probabilities.max(-1)
                for row, p, i in zip(rows, best_p.tolist(), best_i.tolist()):
                    route = routes[row]
                    results[batch[row]] = Prediction(
                        label=info.labels[i], task=task_name, score=round(route.probabilities[0] * p, 6),
                        candidates=list(zip(route.tasks, route.probabilities)),
                    )
        return results  # type: ignore[return-value]

    def _sync(self, records: dict[str, TaskInfo]):
        """Router and module runner for the tasks on disk now. Tasks added, removed or replaced since
        the last call (by this object or another process) are picked up; a runner holding a module
        that changed is rebuilt, its modules reloading lazily."""
        from .inference import ModuleRunner
        from .routing import PrototypeRouter, load_statistics

        current = {name: info.record.get("id", "") for name, info in records.items()}
        if self._router is None or current != self._synced:
            router = PrototypeRouter()
            for name, info in records.items():
                router.add_task(name, load_statistics(info.path))
            self._router = router
            if self._runner is not None and any(current.get(n) != self._synced.get(n) for n in self._runner.loaded):
                self._runner = None
            self._synced = current
        if self._runner is None:
            self._runner = ModuleRunner(self.base.model)
        return self._router, self._runner


def _as_dataset(data: DataLike) -> Dataset:
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (str, os.PathLike)):
        return load_dataset(data)
    raise AdapterBankError(f"expected a dataset path or Dataset, got {type(data).__name__}")


def _accuracy(trained, tokenizer, data: Dataset, labels: list[str], max_length: int) -> float:
    """Within-task accuracy of a freshly trained module on labelled data."""
    from .encoding import tokenize
    from .training import classify

    token_ids = tokenize(tokenizer, data.texts, max_length)
    predicted = classify(trained.peft_model, trained.head, tokenizer, token_ids).argmax(-1).tolist()
    return round(sum(labels[p] == t for p, t in zip(predicted, data.targets)) / len(data), 6)


def _check_positive(**values: float | None) -> None:
    """Numeric options must be positive; None means "use the default" and passes."""
    for key, value in values.items():
        if value is not None and value <= 0:
            raise AdapterBankError(f"{key} must be positive, got {value}")
