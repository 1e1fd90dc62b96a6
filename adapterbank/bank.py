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
from . import faults
from .data import Dataset, check_label_count, load_dataset
from .errors import AdapterBankError, BankError, BaseMismatchError, DataError, TaskNotFoundError
from .causal.bank import CausalBankMixin
from .core.models import DEFAULT_BASE, DEFAULT_MAX_LENGTH, Base, load_base, resolve_device
from .store.registry import Registry


@dataclass
class Prediction:
    """A task-agnostic answer: the label, the task whose module gave it, and a score in [0, 1].

    `score` is the router's probability for `task` times the module's probability for `label`;
    `candidates` lists the tasks the router considered, best first, with its probability for each.
    `label` and `task` are None when the text is out of scope: it fits no task's classes as well as
    that task's own training texts did (the router's `ood_quantile` threshold).
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


class AdapterBank(CausalBankMixin):
    """A frozen base model plus one small module per task, stored under one directory.

    Classification banks sit over an encoder; causal-LM banks over a decoder whose base is versioned
    by merges (lm_bank.py holds their methods: generate, merge, rollback, base_versions)."""

    def __init__(self, registry: Registry, device: str = "auto", base_override: str | None = None):
        self.registry = registry
        self._device_spec = device
        self._base_spec = base_override
        self._base: Base | None = None
        self._router = None  # routing.RouterIndex, built on first predict
        self._runner = None  # inference.RoutedModel, built on first predict
        self._synced: dict[str, str] = {}  # task name -> task id the router and runner were built for
        self._versions: dict[str, Base] = {}  # causal banks: loaded base versions
        self._generators: dict = {}  # causal banks: base version -> generation.VersionGenerator
        self._router_encoder = None  # causal banks: (SplitEncoder, tokenizer) of the router encoder

    # -- lifecycle ------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, base: str = DEFAULT_BASE, device: str = "auto",
               router_encoder: str = DEFAULT_BASE) -> "AdapterBank":
        """Make a new bank at `path` (must not exist, or be empty) over `base`: an encoder (hub id, local
        dir, or `minilm`) for classification, or a causal LM (`smollm2-135m`, a .gguf file, a hub id or
        local dir of a ...ForCausalLM model) for continual pre-training and routed generation.
        `router_encoder`: causal banks only, the encoder whose features route prompts to domains."""
        Registry.ensure_creatable(path)  # checked before the (slow) model load; nothing is written until both pass
        from .core.backbone import DEFAULT_UPPER_LAYERS, SplitEncoder
        from .core.models import is_causal_lm
        from .routing.index import DEFAULT_METHOD, DEFAULT_OOD_QUANTILE

        if is_causal_lm(base):
            return cls._create_causal(path, base, device, router_encoder)
        loaded = load_base(base, resolve_device(device))
        if not SplitEncoder.supports(loaded.model):
            raise AdapterBankError(f"{base!r}: classification banks need a BERT-like encoder "
                                   "(embeddings + encoder.layer, at least 2 layers)")
        router_layers = SplitEncoder(loaded.model, DEFAULT_UPPER_LAYERS).router_layers
        manifest = {
            "adapterbank_version": __version__,
            "base": {"id": loaded.model_id, "fingerprint": loaded.fingerprint,
                     "model_type": getattr(loaded.model.config, "model_type", None),
                     "hidden_size": loaded.model.config.hidden_size},
            "backbone": {"upper_layers": DEFAULT_UPPER_LAYERS, "router_layers": router_layers},
            "router": {"method": DEFAULT_METHOD, "ood_quantile": DEFAULT_OOD_QUANTILE,
                       "feature_dim": len(router_layers) * loaded.model.config.hidden_size},
        }
        bank = cls(Registry.create(path, manifest), device=device)
        bank._base = loaded
        return bank

    @classmethod
    def _create_causal(cls, path, base: str, device: str, router_encoder: str) -> "AdapterBank":
        """A causal bank is built in a temp dir beside `path` (base v0 saved as safetensors, bank.json)
        and renamed into place, so a failed or interrupted init leaves nothing behind."""
        import shutil
        import uuid

        from .core.backbone import DEFAULT_UPPER_LAYERS, SplitEncoder
        from .core.models import fingerprint_model, load_causal_lm
        from .store.registry import fsync_dir
        from .routing.index import DEFAULT_METHOD, DEFAULT_OOD_QUANTILE
        from .store.versions import first_version

        root = Path(path).expanduser()
        model_id, model, tokenizer = load_causal_lm(base)
        encoder = load_base(router_encoder, "cpu")
        if not SplitEncoder.supports(encoder.model):
            raise AdapterBankError(f"router encoder {router_encoder!r}: needs a BERT-like encoder")
        router_layers = SplitEncoder(encoder.model, DEFAULT_UPPER_LAYERS).router_layers
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            staging.mkdir()
            fingerprint = fingerprint_model(model)
            v0 = first_version(staging, model, tokenizer, fingerprint, model_id)
            Registry.create(staging, {
                "adapterbank_version": __version__,
                "base": {"id": model_id, "fingerprint": fingerprint, "architecture": "causal-lm",
                         "model_type": getattr(model.config, "model_type", None), "hidden_size": model.config.hidden_size},
                "backbone": {"upper_layers": DEFAULT_UPPER_LAYERS, "router_layers": router_layers},
                "router": {"encoder": encoder.model_id, "encoder_fingerprint": encoder.fingerprint, "method": DEFAULT_METHOD,
                           "ood_quantile": DEFAULT_OOD_QUANTILE,
                           "feature_dim": len(router_layers) * encoder.model.config.hidden_size},
                "base_versions": [v0], "current_base": "v0",
            }, staged=True)
            Registry.ensure_creatable(root)
            if root.exists():
                root.rmdir()
            os.rename(staging, root)
            fsync_dir(root.parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        bank = cls(Registry.open(root), device=device)
        model.name_or_path = model.config._name_or_path = str(root.resolve() / "bases" / "v0")  # as if loaded from there
        bank._versions["v0"] = Base(model_id, model.to(bank.device), tokenizer, fingerprint)
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
        """The frozen base model, loaded on first use and verified against bank.json's fingerprint
        (a causal bank's current base version, checked against the sha256 of its files)."""
        if self.is_causal:
            return self.base_at(self.current_base_version)
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
        batch_size: int | None = None,
        seed: int = 0,
        max_length: int = DEFAULT_MAX_LENGTH,
        progress: bool = True,
        objective: str | None = None,
        block_size: int = 128,
        max_steps: int | None = None,
    ) -> TaskInfo:
        """Train a module for a task and store it; earlier tasks are never touched.

        `objective`: `classification` (labelled texts; the default on encoder banks) or `clm` (unlabelled
        domain text, next-token prediction in blocks of `block_size` tokens, at most `max_steps`
        optimizer steps; the default on causal banks). CLM tasks report held-out perplexity before and
        after training in their metrics.

        A classification task with a single label gets no module or head (there is nothing to
        discriminate): the router alone decides when its texts are meant, and predictions return its label.
        """
        from .kinds import check_kind

        self.registry.ensure_new_name(name)
        check_kind(kind)
        objective = objective or ("clm" if self.is_causal else "classification")
        if objective not in OBJECTIVES:
            raise AdapterBankError(f"unknown objective {objective!r}; choose one of: {', '.join(OBJECTIVES)}")
        _check_positive(rank=rank, virtual_tokens=virtual_tokens, batch_size=batch_size, max_length=max_length,
                        epochs=epochs, lr=lr, block_size=block_size, max_steps=max_steps)
        if objective == "clm":
            if kind != "lora":
                raise AdapterBankError("causal-LM domain modules are LoRA (--kind lora)")
            return self._add_clm_task(name, train, eval, rank, epochs, max_steps, lr, batch_size or 8, block_size,
                                      seed, progress)
        if self.is_causal:
            raise AdapterBankError(f"bank {self.path} is over a causal LM: its tasks use --objective clm "
                                   "(classification banks need an encoder base)")
        if max_steps is not None:
            raise AdapterBankError("max_steps applies to --objective clm; classification uses --epochs")
        batch_size = batch_size or 32
        train_set = _as_dataset(train)
        check_label_count(train_set)
        eval_set = _as_dataset(eval) if eval is not None else None
        labels = train_set.labels
        if eval_set is not None:
            unknown = sorted(set(eval_set.labels) - set(labels))
            if unknown:
                raise DataError(f"{eval_set.source}: labels not in the training data: {', '.join(unknown[:5])}")
        from .core.encoding import tokenize  # heavy (torch, PEFT): only once the input is valid
        from .routing.index import class_statistics, save_statistics
        from .core.backbone import SplitEncoder
        from .classify.training import DEFAULT_CACHE_BYTES, LowerStates, TrainConfig, train_classifier

        base = self.base
        positions = getattr(base.model.config, "max_position_embeddings", None)
        reserved = virtual_tokens if kind == "prompt" else 0
        if positions is not None and max_length + reserved > positions:
            max_length = positions - reserved  # the soft prompt occupies positions too
        config = TrainConfig(kind=kind, rank=rank, virtual_tokens=virtual_tokens, epochs=epochs, lr=lr,
                             batch_size=batch_size, seed=seed, max_length=max_length)
        started = time.perf_counter()
        index = {label: i for i, label in enumerate(labels)}
        targets = [index[t] for t in train_set.targets]
        token_ids = tokenize(base.tokenizer, train_set.texts, max_length)
        trains_lora = kind == "lora" and len(labels) > 1  # only LoRA training reuses the lower states
        lower = LowerStates(SplitEncoder(base.model, self.upper_layers), base.tokenizer, token_ids, self.device,
                            DEFAULT_CACHE_BYTES if trains_lora else 0)
        faults.point("lower-pass")
        stats = class_statistics(lower.router_features, targets, len(labels))
        record = {"objective": "classification", "labels": labels, "kind": None, "adapterbank_version": __version__,
                  "base": {"id": self.base_id, "fingerprint": base.fingerprint},
                  "data": {"train_fingerprint": train_set.fingerprint(), "train_examples": len(train_set),
                           "train_source": train_set.source}}
        trained = None
        if len(labels) > 1:
            trained = train_classifier(base.model, base.tokenizer, token_ids, targets, len(labels), config,
                                       upper_layers=self.upper_layers, progress=progress, description=f"add-task {name}",
                                       lower_states=lower)
            record.update(kind=kind, hyperparameters=trained.hyperparameters, metrics=dict(trained.metrics))
            faults.point("trained")
        else:
            record["hyperparameters"] = {"max_length": max_length}
            record["metrics"] = {"note": "single label: no module trained, the router alone selects this task"}
        with self.registry.stage_task(name, record) as staging:
            if trained is not None:
                trained.peft_model.save_pretrained(str(staging))
                (staging / "README.md").unlink(missing_ok=True)  # PEFT's model card: only JSON + safetensors here
                faults.point("saved-module")
                trained.head.save(staging)
                faults.point("saved-head")
                if eval_set is not None:  # measured through the inference path, on the files just written
                    record["metrics"]["eval_accuracy"] = _within_task_accuracy(
                        self._model(), base.tokenizer, staging, kind, labels, eval_set, max_length)
                    record["data"].update(eval_fingerprint=eval_set.fingerprint(), eval_examples=len(eval_set))
            save_statistics(staging, stats)
            faults.point("saved-router")
            record["metrics"]["add_task_seconds"] = round(time.perf_counter() - started, 3)
        self._sync({info.name: info for info in self.tasks()})  # keep the saved router index current
        return self.task(name)

    # -- inference ------------------------------------------------------------------------------
    def predict(
        self,
        texts: Sequence[str],
        top_k: int = 1,
        composition: str = "top1",
        method: str | None = None,
        ood_quantile: float | None = None,
        task: str | None = None,
        batch_size: int = 64,
        progress: bool = False,
    ) -> list[Prediction]:
        """Label each text over every label of every task, without being told the task.

        composition: `top1` runs the best task's module; `output` runs the `top_k` best and mixes their
        label probabilities by the router's; `weights` (LoRA) runs one pass with the `top_k` modules'
        updates mixed by the router's probabilities. `method`: router method (routing.METHODS; default
        from bank.json). `ood_quantile`: out-of-scope threshold (0 turns it off). `task`: skip routing.
        """
        from tqdm.auto import tqdm

        from .core.encoding import collate, length_batches, pad_id_of, tokenize
        from .routing.index import Route

        if self.is_causal:
            raise AdapterBankError(f"bank {self.path} is over a causal LM: use generate (predict labels texts "
                                   "with a classification bank)")
        if isinstance(texts, str):
            texts = [texts]
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise DataError(f"text #{i + 1}: expected a string, got {type(text).__name__}")
        if composition not in COMPOSITIONS:
            raise AdapterBankError(f"unknown composition {composition!r}; choose one of: {', '.join(COMPOSITIONS)}")
        if top_k < 1:
            raise AdapterBankError(f"top_k must be at least 1, got {top_k}")
        method, quantile = self._router_settings(method, ood_quantile)
        records = {info.name: info for info in self.tasks()}
        if not records:
            raise BankError(f"bank {self.path} has no tasks yet; add one with `adapterbank add-task`")
        if task is not None and task not in records:
            raise TaskNotFoundError(f"no task named {task!r} in bank {self.path}")
        if not texts:
            return []
        base = self.base
        index, model = self._sync(records)
        k = 1 if composition == "top1" else top_k
        max_length = max(info.record.get("hyperparameters", {}).get("max_length", DEFAULT_MAX_LENGTH) for info in records.values())
        token_ids = tokenize(base.tokenizer, texts, max_length)
        results: list[Prediction | None] = [None] * len(texts)
        for batch in tqdm(length_batches(token_ids, batch_size), desc="predict", unit="batch", disable=not progress, leave=False):
            input_ids, mask = collate([token_ids[i] for i in batch], pad_id_of(base.tokenizer), self.device)
            lower = model.lower(input_ids, mask)
            if task is not None:
                routes = [Route([task], [1.0]) for _ in batch]
            else:
                routes = index.route(lower.router_features.cpu(), top_k=max(k, SHOWN_CANDIDATES), method=method,
                                     ood_quantile=quantile)
            mixtures = _run_modules(model, records, [Route(r.tasks[:k], r.probabilities[:k], r.in_scope) for r in routes],
                                    lower, input_ids, mask, composition, self._check_task)
            for row, (route, mixture) in enumerate(zip(routes, mixtures)):
                candidates = list(zip(route.tasks, route.probabilities))
                if not route.in_scope:
                    results[batch[row]] = Prediction(None, None, 0.0, candidates)
                    continue
                by_label: dict[str, float] = {}
                for (label, _), p in mixture.items():  # one label string shared by tasks is one label
                    by_label[label] = by_label.get(label, 0.0) + p
                label = max(by_label, key=by_label.get)
                owner = max((key for key in mixture if key[0] == label), key=mixture.get)[1]
                score = by_label[label] * (route.probabilities[0] if composition == "top1" else 1.0)
                results[batch[row]] = Prediction(label, owner, round(score, 6), candidates)
        return results  # type: ignore[return-value]

    def _sync(self, records: dict[str, TaskInfo]):
        """Router index and routed model for the tasks on disk now. Tasks added, removed or replaced
        since the last call (by this object or another process) are picked up; loaded modules whose
        task changed are dropped and reload lazily."""
        current = {name: info.record.get("id", "") for name, info in records.items()}
        stale = [n for n in (self._runner.loaded if self._runner is not None else []) if current.get(n) != self._synced.get(n)]
        index = self._index(records)
        for name in stale:
            del self._runner.loaded[name]
        return index, self._model()

    def _router_settings(self, method: str | None, ood_quantile: float | None) -> tuple[str, float]:
        """(router method, out-of-scope quantile): the caller's, else bank.json's defaults, validated."""
        from .routing.index import METHODS

        router = self.registry.manifest["router"]
        method = method or router["method"]
        if method not in METHODS:
            raise AdapterBankError(f"unknown router method {method!r}; choose one of: {', '.join(METHODS)}")
        quantile = router["ood_quantile"] if ood_quantile is None else ood_quantile
        if not 0 <= quantile < 1:
            raise AdapterBankError(f"ood_quantile must be in [0, 1), got {quantile}")
        return method, quantile

    def _index(self, records: dict[str, TaskInfo]):
        """The router index over `records`, rebuilt or extended when the tasks on disk changed."""
        from .routing.index import sync_index

        current = {name: info.record.get("id", "") for name, info in records.items()}
        if self._router is None or current != self._synced:
            dim = self.registry.manifest["router"]["feature_dim"]
            tasks = {name: (task_id, records[name].path) for name, task_id in current.items()}
            self._router = sync_index(self.path, tasks, dim, cached=self._router,
                                      verify=lambda name: self._check_task(name, records[name], router=True))
            self._synced = current
        return self._router

    def _check_task(self, name: str, info: TaskInfo, router: bool = False) -> None:
        """Before a task's files are first read they must match the sha256 in its task.json: its router
        statistics (`router=True`, read for the index) or the module's files (read on first load)."""
        from .routing.index import ROUTER_FILE

        files = [ROUTER_FILE] if router else sorted(f for f in info.record.get("files", {}) if f != ROUTER_FILE)
        self.registry.check_files(name, info.record, files)

    def _model(self):
        from .classify.inference import RoutedModel

        if self._runner is None:
            self._runner = RoutedModel(self.base.model, self.upper_layers)
        return self._runner

    @property
    def upper_layers(self) -> int:
        return self.registry.manifest["backbone"]["upper_layers"]


COMPOSITIONS = ("top1", "output", "weights")
OBJECTIVES = ("classification", "clm")
SHOWN_CANDIDATES = 3  # router candidates reported with each prediction, whatever the composition


def _run_modules(model, records: dict[str, TaskInfo], routes, lower, input_ids, mask, composition: str,
                 check=None) -> list[dict]:
    """For each row, {(label, task): probability} mixed over the row's candidate tasks.

    All (row, task) pairs of the batch go through one upper pass for LoRA (each row through its own
    module) and one full pass for prompt modules; `weights` mixes LoRA updates inside a single pass."""
    import torch

    mixtures: list[dict] = [{} for _ in routes]
    lora_pairs, prompt_pairs = [], []  # (row, task, weight)
    for row, route in enumerate(routes):
        total = sum(route.probabilities) or 1.0
        for name, p in zip(route.tasks, route.probabilities):
            info, weight = records[name], p / total
            if info.kind is None:  # one-label task: its label, with the router's confidence
                key = (info.labels[0], name)
                mixtures[row][key] = mixtures[row].get(key, 0.0) + weight
            else:
                (lora_pairs if info.kind == "lora" else prompt_pairs).append((row, name, weight))
    modules = {}
    for name in dict.fromkeys(name for _, name, _ in lora_pairs + prompt_pairs):
        if check is not None and name not in model.loaded:
            check(name, records[name])
        modules[name] = model.load(name, records[name].path, records[name].kind)
    features: list[tuple[int, str, float, torch.Tensor]] = []
    if lora_pairs and composition == "weights":
        rows = sorted({row for row, _, _ in lora_pairs})
        position = {row: i for i, row in enumerate(rows)}
        plan = []
        for name in dict.fromkeys(name for _, name, _ in lora_pairs):
            mine = [(position[row], w) for row, n, w in lora_pairs if n == name]
            plan.append((modules[name], torch.tensor([p for p, _ in mine]), torch.tensor([w for _, w in mine])))
        mixed = model.lora_features(lower, torch.tensor(rows), plan)
        features += [(row, name, w, mixed[position[row]]) for row, name, w in lora_pairs]
    elif lora_pairs:
        plan = [(modules[name], torch.tensor([i for i, (_, n, _) in enumerate(lora_pairs) if n == name]), None)
                for name in dict.fromkeys(name for _, name, _ in lora_pairs)]
        out = model.lora_features(lower, torch.tensor([row for row, _, _ in lora_pairs]), plan)
        features += [(row, name, w, out[i]) for i, (row, name, w) in enumerate(lora_pairs)]
    if prompt_pairs:
        rows = torch.tensor([row for row, _, _ in prompt_pairs])
        out = model.prompt_features([modules[name] for _, name, _ in prompt_pairs], input_ids[rows], mask[rows])
        features += [(row, name, w, out[i]) for i, (row, name, w) in enumerate(prompt_pairs)]
    by_task: dict[str, list[int]] = {}
    for i, (_, name, _, _) in enumerate(features):
        by_task.setdefault(name, []).append(i)
    for name, items in by_task.items():
        with torch.no_grad():
            probabilities = torch.softmax(modules[name].head(torch.stack([features[i][3] for i in items])), -1).cpu()
        labels = records[name].labels
        for i, p in zip(items, probabilities):
            row, _, weight, _ = features[i]
            for label, value in zip(labels, p.tolist()):
                key = (label, name)
                mixtures[row][key] = mixtures[row].get(key, 0.0) + weight * value
    return mixtures


def _as_dataset(data: DataLike) -> Dataset:
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (str, os.PathLike)):
        return load_dataset(data)
    raise AdapterBankError(f"expected a dataset path or Dataset, got {type(data).__name__}")


def _within_task_accuracy(model, tokenizer, task_dir: Path, kind: str, labels: list[str], data: Dataset,
                          max_length: int) -> float:
    """Accuracy of a just-written module on labelled data, the task given (no routing)."""
    import torch

    from .core.encoding import map_batches, tokenize

    module = model.load_unnamed(task_dir, kind)

    def predict(input_ids, mask):
        if kind == "lora":
            lower = model.lower(input_ids, mask)
            features = model.lora_features(lower, torch.arange(len(input_ids)), [(module, torch.arange(len(input_ids)), None)])
        else:
            features = model.prompt_features([module] * len(input_ids), input_ids, mask)
        return module.head(features).argmax(-1, keepdim=True)

    predicted = map_batches(predict, tokenize(tokenizer, data.texts, max_length), tokenizer, model.device)
    return round(sum(labels[p] == t for p, t in zip(predicted[:, 0].tolist(), data.targets)) / len(data), 6)


def _check_positive(**values: float | None) -> None:
    """Numeric options must be positive; None means "use the default" and passes."""
    for key, value in values.items():
        if value is not None and value <= 0:
            raise AdapterBankError(f"{key} must be positive, got {value}")
