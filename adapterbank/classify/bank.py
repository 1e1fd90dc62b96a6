"""ClassifierBank: a frozen encoder, one classification module (and head) per task, and `predict`,
which labels texts over every label of every task without being told the task."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

from .. import faults
from ..version import __version__
from ..bank import SHOWN_CANDIDATES, AdapterBank, DataLike, TaskInfo, as_texts
from ..core.models import Base
from ..data import MAX_LABELS_PER_TASK, as_dataset, check_label_count
from ..errors import AdapterBankError, BankError, DataError
from ..store.registry import Registry
from .config import ClassificationConfig

COMPOSITIONS = ("top1", "output", "weights")
DEFAULT_TOP_K = 3  # tasks mixed by `output` / `weights` composition
DEFAULT_BATCH_SIZE = 64  # texts per forward pass of predict


@dataclass
class Prediction:
    """A task-agnostic answer: the label, the task whose module gave it, and a score in [0, 1].

    `score` is the router's probability for `task` times the module's probability for `label`;
    `candidates` lists the tasks the router considered, best first, with its probability for each.
    `label` and `task` are None when the text is out of scope: it is farther from its task's classes
    than that task's own held-out texts at the `ood_quantile` (routing/scope.py); `closest` then still
    says which (task, label) it came nearest to. `labels`: the `top_labels` best labels with their
    probabilities (predict's `top_labels=`; empty by default).
    """

    label: str | None
    task: str | None
    score: float
    candidates: list[tuple[str, float]] = field(default_factory=list)
    labels: list[tuple[str, str, float]] = field(default_factory=list)  # (label, task, probability), best first
    closest: tuple[str, str] | None = None  # out of scope only: the (task, label) it came nearest to

    def to_dict(self) -> dict:
        row = {"label": self.label, "task": self.task, "score": self.score,
               "candidates": [{"task": t, "probability": p} for t, p in self.candidates]}
        if self.labels:
            row["labels"] = [{"label": label, "task": task, "probability": p} for label, task, p in self.labels]
        if self.closest is not None:
            row["closest"] = {"task": self.closest[0], "label": self.closest[1]}
        return row


class ClassifierBank(AdapterBank, family="classifier"):
    """A frozen encoder plus one small module and head per task; routed, task-agnostic `predict`."""

    title: ClassVar[str] = "classification bank"
    create_hint: ClassVar[str] = "`adapterbank init BANK --base minilm` (any BERT-like encoder)"
    objectives: ClassVar[dict[str, type]] = {"classification": ClassificationConfig}

    def __init__(self, registry: Registry, device: str = "auto", base_override: str | None = None):
        super().__init__(registry, device)
        self._base_spec = base_override
        self._base: Base | None = None
        self._runner = None  # inference.RoutedModel, built on first use
        self._pending = None  # (pool file stamp, online.pool.PendingView) of the pending pool last read

    @classmethod
    def _create(cls, path: Path, base: str, device: str, router_encoder: str | None) -> "ClassifierBank":
        from ..core.backbone import DEFAULT_UPPER_LAYERS, SplitEncoder
        from ..core.models import load_base, resolve_device
        from ..routing.kernel import KernelMap
        from ..routing.methods import DEFAULT_LABEL_WEIGHT, DEFAULT_METHOD, DEFAULT_OOD_QUANTILE

        if router_encoder is not None:
            raise AdapterBankError("router_encoder applies to causal-LM banks; a classification bank routes with "
                                   "its own base's lower layers")
        loaded = load_base(base, resolve_device(device))
        if not SplitEncoder.supports(loaded.model):
            raise AdapterBankError(f"{base!r}: classification banks need a BERT-like encoder "
                                   "(embeddings + encoder.layer, at least 2 layers)")
        router_layers = SplitEncoder(loaded.model, DEFAULT_UPPER_LAYERS).router_layers
        kernel = KernelMap.for_features(len(router_layers) * loaded.model.config.hidden_size, len(router_layers))
        manifest = {
            "adapterbank_version": __version__, "family": cls.family,
            "base": {"id": loaded.model_id, "fingerprint": loaded.fingerprint,
                     "model_type": getattr(loaded.model.config, "model_type", None),
                     "hidden_size": loaded.model.config.hidden_size},
            "backbone": {"upper_layers": DEFAULT_UPPER_LAYERS, "router_layers": router_layers},
            "router": {"method": DEFAULT_METHOD, "ood_quantile": DEFAULT_OOD_QUANTILE, "label_weight": DEFAULT_LABEL_WEIGHT,
                       "feature_dim": kernel.features, "kernel": kernel.to_manifest()},
        }
        bank = cls(Registry.create(path, manifest), device=device)
        bank._base = loaded
        return bank

    @classmethod
    def _open(cls, registry: Registry, base: str | None, device: str, lazy: bool) -> "ClassifierBank":
        bank = cls(registry, device=device, base_override=base)
        if not lazy:
            bank.base  # noqa: B018 - load and verify now
        return bank

    @property
    def base(self) -> Base:
        """The frozen encoder, loaded on first use and verified against bank.json's fingerprint."""
        from ..core.models import load_verified

        if self._base is None:
            self._base = load_verified(self._base_spec or self.base_id, self.device,
                                       self.registry.manifest["base"].get("fingerprint"), "base model",
                                       f"the bank's base {self.base_id!r}")
        return self._base

    @property
    def upper_layers(self) -> int:
        return self.registry.manifest["backbone"]["upper_layers"]

    @property
    def router_map(self):
        """The kernel map the router's statistics live in (routing/kernel.py); None in banks made before it."""
        from ..routing.kernel import KernelMap
        return KernelMap.from_manifest(self.registry.manifest["router"].get("kernel"))

    # -- training -------------------------------------------------------------------------------
    def add_task(self, name: str, train: DataLike, eval: DataLike | None = None, *,  # noqa: A002 - the CLI's --eval
                 config: ClassificationConfig | None = None, progress: bool = True, **settings: Any) -> TaskInfo:
        """Train a module for a task on labelled texts and store it; earlier tasks are never touched.

        Args:
            name: the task's name (letters, digits, `_ . -`, at most 64).
            train: a .jsonl/.csv file of `{"text", "label"}`, a Dataset, a list of `{"text", "label"}` dicts or
                (text, label) pairs, or a (texts, labels) pair of lists.
            eval: validation data in the same form; its accuracy is stored in the task's metrics.
            config: a ClassificationConfig; or give its fields as keywords (`kind="prompt"`, `epochs=5`,
                `lr=...`, `batch_size=...`, `seed=...`, `max_length=...`, `depth=1` to skip the depth search)
                with the kind's hyper-parameters (`rank=4` for LoRA, `virtual_tokens=8` for prompt tuning).
            progress: show a progress bar over the training steps.

        A task with a single label gets no module or head (there is nothing to discriminate): the
        router alone decides when its texts are meant, and predictions return its label.
        """
        from ..kinds import get_kind

        self.registry.ensure_new_name(name)
        config = self._config(config, settings)
        train_set = as_dataset(train)
        check_label_count(train_set)
        eval_set = as_dataset(eval) if eval is not None else None
        labels = train_set.labels
        if eval_set is not None:
            unknown = sorted(set(eval_set.labels) - set(labels))
            if unknown:
                raise DataError(f"{eval_set.source}: labels not in the training data: {', '.join(unknown[:5])}")
        from ..core.backbone import SplitEncoder  # heavy (torch, PEFT): only once the input is valid
        from ..core.encoding import tokenize
        from ..kinds import save_module
        from ..routing.statistics import class_statistics, save_statistics
        from .inference import module_accuracy
        from .depth import settle_depth
        from .training import DEFAULT_CACHE_BYTES, LowerStates, train_classifier, trains_on_upper

        base = self.base
        positions = getattr(base.model.config, "max_position_embeddings", None)
        reserved = get_kind(config.kind).reserved_positions(config.params)  # a soft prompt occupies positions too
        if positions is not None and config.max_length + reserved > positions:
            config = dataclasses.replace(config, max_length=positions - reserved)
        started = time.perf_counter()
        index = {label: i for i, label in enumerate(labels)}
        targets = [index[t] for t in train_set.targets]
        token_ids = tokenize(base.tokenizer, train_set.texts, config.max_length)
        cache = DEFAULT_CACHE_BYTES if trains_on_upper(config, base.model, self.upper_layers) and len(labels) > 1 else 0
        lower = LowerStates(SplitEncoder(base.model, self.upper_layers, self.router_map), base.tokenizer, token_ids,
                            self.device, cache)  # the router's features, and the bank-depth module's training input
        faults.point("lower-pass")
        stats = class_statistics(lower.router_features, targets, len(labels))
        config, depth, searched = settle_depth(config, base, token_ids, targets, self.upper_layers, progress, name, lower)
        if depth != self.upper_layers:  # a deeper module: its own lower pass (the router's features stay the bank's)
            lower = LowerStates(SplitEncoder(base.model, depth), base.tokenizer, token_ids, self.device, cache)
        record = {"objective": config.objective, "labels": labels, "kind": None, "adapterbank_version": __version__,
                  "base": {"id": self.base_id, "fingerprint": base.fingerprint}, "config": dataclasses.asdict(config),
                  "data": {"train_fingerprint": train_set.fingerprint(), "train_examples": len(train_set),
                           "train_source": train_set.source}}
        trained = None
        if len(labels) > 1:
            trained = train_classifier(base.model, base.tokenizer, token_ids, targets, len(labels), config,
                                       upper_layers=depth, progress=progress, description=f"add-task {name}",
                                       lower_states=lower)
            record.update(kind=config.kind, hyperparameters=trained.hyperparameters, metrics={**trained.metrics, **searched})
            faults.point("trained")
        else:
            record["hyperparameters"] = {"max_length": config.max_length}
            record["metrics"] = {"note": "single label: no module trained, the router alone selects this task"}
        with self.registry.stage_task(name, record) as staging:
            if trained is not None:
                save_module(trained.peft_model, staging)
                faults.point("saved-module")
                trained.head.save(staging)
                faults.point("saved-head")
                if eval_set is not None:  # measured through the inference path, on the files just written
                    record["metrics"]["eval_accuracy"] = module_accuracy(
                        self._model(), base.tokenizer, staging, config.kind, labels, eval_set, config.max_length)
                    record["data"].update(eval_fingerprint=eval_set.fingerprint(), eval_examples=len(eval_set))
            save_statistics(staging, stats)
            faults.point("saved-router")
            record["metrics"]["add_task_seconds"] = round(time.perf_counter() - started, 3)
        self._save_index()  # for the next open; the task is in even if this fails
        return self.task(name)

    # -- inference ------------------------------------------------------------------------------
    def predict(self, texts: Sequence[str], top_k: int = DEFAULT_TOP_K, composition: str = "top1",
                method: str | None = None, ood_quantile: float | None = None, task: str | None = None,
                batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False, top_labels: int = 0,
                label_weight: float | None = None) -> list[Prediction]:
        """Label each text over every label of every task, without being told the task.

        Args:
            texts: the texts (a single string is one text).
            top_k: tasks mixed by `output` / `weights` composition.
            composition: `top1` runs the best task's module; `output` runs the `top_k` best and mixes
                their label probabilities by the router's; `weights` runs one pass with the `top_k`
                modules' updates mixed by the router's probabilities (kinds batched on the upper layers;
                others are mixed by output).
            method: router method (routing/methods.py); default from bank.json.
            ood_quantile: out-of-scope threshold; 0 turns it off; default from bank.json.
            task: skip routing, every text goes to this task's module.
            batch_size: texts per forward pass.
            progress: show a progress bar over the batches.
            top_labels: also return the best `top_labels` labels of each text with their probabilities
                (Prediction.labels), for a full distribution over the labels the modules that ran know.
            label_weight: a module's label probabilities are multiplied by the router's posterior over its
                task's labels to this power (inference.router_prior); 0: the module alone; default from
                bank.json (banks made before it: 0).
        """
        from tqdm.auto import tqdm

        from ..core.encoding import collate, length_batches, pad_id_of, tokenize
        from ..routing.index import Route
        from ..settings import MAX_BATCH, check_number
        from .inference import router_prior, run_modules

        texts = as_texts(texts)
        if composition not in COMPOSITIONS:
            raise AdapterBankError(f"unknown composition {composition!r}; choose one of: {', '.join(COMPOSITIONS)}")
        check_number("top_k", top_k, minimum=1, maximum=MAX_BATCH, integer=True)
        check_number("batch_size", batch_size, minimum=1, maximum=MAX_BATCH, integer=True)
        check_number("top_labels", top_labels, minimum=0, maximum=MAX_LABELS_PER_TASK * 100, integer=True)
        method, quantile = self._router_settings(method, ood_quantile)
        label_weight = self.registry.manifest["router"].get("label_weight", 0.0) if label_weight is None else label_weight
        check_number("label_weight", label_weight, minimum=0)
        records = self._records()
        records, index = self._with_pending(records, self._sync(records) if records else None)
        if not records:
            raise BankError(f"bank {self.path} has no tasks yet; add one with `adapterbank add-task` or `adapterbank learn`")
        self._require_task(task, records)
        if not texts:
            return []
        base, model = self.base, self._model()
        k = 1 if composition == "top1" else top_k
        token_ids = tokenize(base.tokenizer, texts, _max_length(records))
        results: list[Prediction | None] = [None] * len(texts)
        keep_from = model.first_layer([(info.record.get("config") or {}).get("depth") for info in records.values()])
        for batch in tqdm(length_batches(token_ids, batch_size), desc="predict", unit="batch", disable=not progress, leave=False):
            input_ids, mask = collate([token_ids[i] for i in batch], pad_id_of(base.tokenizer), self.device)
            lower = model.lower(input_ids, mask, keep_from)
            if task is not None:
                routes = [Route([task], [1.0]) for _ in batch]
            else:
                routes = index.route(lower.router_features.cpu(), top_k=max(k, SHOWN_CANDIDATES), method=method,
                                     ood_quantile=quantile)
            mixtures = run_modules(model, records, [Route(r.tasks[:k], r.probabilities[:k], r.in_scope) for r in routes],
                                   lower, input_ids, mask, composition, check=lambda n: self._check_task(n, records[n]),
                                   label_prior=router_prior(index, lower.router_features.cpu(), method, label_weight))
            for row, (route, mixture) in enumerate(zip(routes, mixtures)):
                results[batch[row]] = _answer(route, mixture, composition, top_labels)
        return results  # type: ignore[return-value]

    # -- online learning (online/) ---------------------------------------------------------------
    def learn(self, stream, **options):
        """Learn from a stream of labelled examples, answering at every moment (online/learner.py): `stream`
        is a JSON Lines path (resumable), `-` for stdin, or an iterable of rows; options: boundaries
        ("blurry" | "hard"), on_error ("stop" | "skip"), min_per_label, min_labels, max_pending, flush,
        progress, and add-task settings for the modules it trains."""
        from ..online.learner import learn

        return learn(self, stream, **options)

    def purge_pending(self) -> int:
        """Drop the pending pool and the raw text it holds; returns how many examples it held."""
        from ..online.learner import purge

        return purge(self)

    def _with_pending(self, records: dict[str, TaskInfo], index):
        """(records, index) that answer now: the tasks' plus one router-only pseudo-task per pending label."""
        from ..online.pool import with_pending

        return with_pending(self, records, index)

    def _router_features(self, texts: Sequence[str], records: dict[str, TaskInfo]):
        """Mean pools of the base's lower layers (core/backbone.py), texts cut as predict cuts them."""
        from ..core.encoding import tokenize

        return self._features_of(tokenize(self.base.tokenizer, texts, _max_length(records)))

    def _features_of(self, token_ids):
        """The router's features of tokenized texts, from the bank's own split (whatever a task's depth)."""
        from ..core.encoding import map_batches

        lower = self._model().lower
        return map_batches(lambda ids, mask: lower(ids, mask).router_features, token_ids, self.base.tokenizer, self.device)

    def _sync(self, records: dict[str, TaskInfo]):
        """Router index for the tasks on disk now. Tasks added, removed or replaced
        since the last call (by this object or another process) are picked up; loaded modules whose
        task changed are dropped and reload lazily."""
        current = {name: info.record.get("id", "") for name, info in records.items()}
        stale = [n for n in (self._runner.loaded if self._runner is not None else []) if current.get(n) != self._synced.get(n)]
        index = self._index(records)
        for name in stale:
            del self._runner.loaded[name]
        return index

    def _model(self):
        from .inference import RoutedModel

        if self._runner is None:
            self._runner = RoutedModel(self.base.model, self.upper_layers, router_map=self.router_map)
        return self._runner

    # -- export ---------------------------------------------------------------------------------
    def export(self, out: str | os.PathLike, task: str | None = None, base_version: str | None = None,
               peft: bool = False, base_name: str | None = None) -> Path:
        """Write the encoder as a plain Hugging Face checkpoint (`AutoModel.from_pretrained(out)`), with
        `task`'s module folded in and its head (`head.safetensors`, `labels.json`) beside it; or with
        `peft=True` the task's module as a PEFT directory, head and labels included, naming a base that
        loads offline (the packaged model's folder; `base_name` overrides it, e.g. with the hub id).
        `adapterbank.load_classifier(out)` loads either. Atomic: nothing is left at `out` on failure."""
        from ..core.models import save_checkpoint
        from ..kinds import get_kind, merged_model
        from ..store.files import ensure_new_dir, write_new_dir
        from .heads import export_head

        if base_version is not None:
            raise AdapterBankError("--base-version applies to causal-LM banks only")
        ensure_new_dir(out, "--out")
        info = self.task(task) if task is not None else None
        if info is not None and info.kind is None:
            raise AdapterBankError(f"task {info.name!r} has a single label: it has no module (the router alone selects "
                                   "it), so there is nothing to export")
        if info is not None:
            self._check_task(info.name, info)
        if peft:
            return self._export_peft(out, info, base_name)
        if base_name is not None:
            raise AdapterBankError("--base-name applies to --peft exports (a merged checkpoint needs no base)")
        if info is not None and not get_kind(info.kind).merges_into_weights:
            raise AdapterBankError(f"task {info.name!r} is a {info.kind} module, which does not fold into weights; "
                                   "export it with --peft")
        base = self.base
        model = merged_model(base.model, info.path) if info is not None else base.model

        def fill(staging: Path) -> None:
            save_checkpoint(staging, model, base.tokenizer)
            if info is not None:
                export_head(info.path, staging, info.labels, _max_length({info.name: info}))

        return write_new_dir(out, fill, what="--out")

    def _peft_base(self, info: TaskInfo) -> str:
        """The packaged MiniLM's folder (or the base as recorded): loads offline."""
        from ..core.models import load_location

        return load_location(self.base_id)

    def _peft_extra(self, info: TaskInfo, directory: Path) -> None:
        from .heads import export_head

        export_head(info.path, directory, info.labels, _max_length({info.name: info}))


def _max_length(records: dict[str, TaskInfo]) -> int:
    """Tokens per text at inference: the longest any task was trained with."""
    from ..core import DEFAULT_MAX_LENGTH

    return max([info.record.get("hyperparameters", {}).get("max_length", DEFAULT_MAX_LENGTH)
                for info in records.values()] or [DEFAULT_MAX_LENGTH])


def _answer(route, mixture: dict, composition: str, top_labels: int = 0) -> Prediction:
    """One text's prediction from its route and its {(label, task): probability} mixture."""
    candidates = list(zip(route.tasks, route.probabilities))
    scale = route.probabilities[0] if composition == "top1" and route.probabilities else 1.0
    by_label: dict[str, float] = {}
    for (label, _), p in mixture.items():  # one label string shared by tasks is one label
        by_label[label] = by_label.get(label, 0.0) + p
    if not by_label:
        return Prediction(None, None, 0.0, candidates)
    ranked = sorted(by_label, key=by_label.get, reverse=True)
    owners = {label: max((key for key in mixture if key[0] == label), key=mixture.get)[1] for label in ranked[:max(top_labels, 1)]}
    labels = [(label, owners[label], round(by_label[label] * scale, 6)) for label in ranked[:top_labels]]
    label = ranked[0]
    if not route.in_scope:
        return Prediction(None, None, 0.0, candidates, labels, closest=(owners[label], label))
    return Prediction(label, owners[label], round(by_label[label] * scale, 6), candidates, labels)
