"""AdapterBank: the one entry point, and what every bank has.

`AdapterBank.create` and `AdapterBank.open` return the bank's family class, chosen once, from the base
model (create) or bank.json (open): `ClassifierBank` (classify/) over an encoder, `CausalBank`
(causal/) over a causal LM. This class holds what both share: the bank on disk, its tasks, the router
index over every task's statistics, `route`, `remove_task` and `verify`. An operation only the other
family has (`predict` on a causal bank, `generate` on a classification bank) raises
UnsupportedOperationError naming the family that has it.

torch, transformers and PEFT are imported inside the methods that train or predict, so listing,
showing and removing tasks start in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

from .core.models import DEFAULT_BASE, check_device
from .data import Dataset
from .errors import AdapterBankError, AdapterBankWarning, BankError, DataError, TaskNotFoundError, UnsupportedOperationError
from .store import VerifyReport, verify_bank
from .store.files import ensure_new_dir
from .store.registry import INDEX_FILE, Registry

SHOWN_CANDIDATES = 3  # router candidates reported with each answer
SERVING_FILE = "serving.json"  # export --all: how vLLM and LoRAX load the exported modules


@dataclass
class TaskInfo:
    """What the bank knows about one task (the contents of its task.json, plus where it lives)."""

    name: str
    path: Path
    record: dict

    @property
    def kind(self) -> str | None:
        """The module's kind; None for a one-label task (the router alone selects it)."""
        return self.record.get("kind")

    @property
    def objective(self) -> str | None:
        return self.record.get("objective")

    @property
    def labels(self) -> list[str]:
        return list(self.record.get("labels", []))

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())

    def __repr__(self) -> str:
        return f"TaskInfo({self.name!r}, objective={self.objective!r}, kind={self.kind!r}, labels={len(self.labels)})"


DataLike = str | os.PathLike | Dataset


class AdapterBank:
    """A frozen base model plus one small module per task, stored under one directory."""

    family: ClassVar[str] = ""
    title: ClassVar[str] = ""  # how messages name the family, e.g. "causal-LM bank"
    create_hint: ClassVar[str] = ""  # how to create one, for messages
    objectives: ClassVar[dict[str, type]] = {}  # objective name -> its training config class; the first is the default
    _families: ClassVar[dict[str, type["AdapterBank"]]] = {}

    def __init_subclass__(cls, family: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if family:
            cls.family = family
            AdapterBank._families[family] = cls

    def __init__(self, registry: Registry, device: str = "auto"):
        check_device(device)
        self.registry = registry
        self._device_spec = device
        self._router = None  # routing.index.RouterIndex over the tasks in self._synced
        self._synced: dict[str, str] = {}  # task name -> task id the router index was built for

    # -- lifecycle ------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, base: str = DEFAULT_BASE, device: str = "auto",
               router_encoder: str | None = None) -> "AdapterBank":
        """Make a new bank at `path` (must not exist, or be empty) over `base`: an encoder (hub id, local
        dir, or `minilm`) makes a classification bank; a causal LM (`smollm2-135m`, a .gguf file, a hub id
        or local dir of a ...ForCausalLM model) a causal-LM bank for domain modules, routed generation
        and merges. `router_encoder`: causal banks only, the encoder whose features route prompts
        (default all-MiniLM-L6-v2). Nothing is written unless the whole bank is."""
        from .core.models import is_causal_lm

        check_device(device)
        ensure_new_dir(path, "bank directory")  # checked before the (slow) model load
        family = cls._family("causal" if is_causal_lm(base) else "classifier")
        return family._create(Path(path).expanduser(), base, device, router_encoder)

    @classmethod
    def open(cls, path: str | os.PathLike, base: str | None = None, device: str = "auto", lazy: bool = False) -> "AdapterBank":
        """Open an existing bank as its family's class. The base is loaded and checked against the
        recorded fingerprint now, or on first use with `lazy=True` (for listing tasks without a model).
        `base` (classification banks): another copy of the same model, e.g. a moved directory; a
        different model is refused."""
        registry = Registry.open(path)
        return cls._family(registry.family)._open(registry, base, device, lazy)

    @staticmethod
    def families() -> dict[str, type["AdapterBank"]]:
        """The bank families by name (`classifier`, `causal`): each class declares its objectives."""
        return dict(AdapterBank._families)

    @classmethod
    def _family(cls, name: str) -> type["AdapterBank"]:
        if name not in AdapterBank._families:
            raise BankError(f"unknown bank family {name!r} in bank.json (this adapterbank knows: {', '.join(AdapterBank._families)})")
        family = AdapterBank._families[name]
        if cls is not AdapterBank and cls is not family:
            raise AdapterBankError(f"this is a {family.title}, not a {cls.title}: use AdapterBank.create/open")
        return family

    @classmethod
    def _create(cls, path: Path, base: str, device: str, router_encoder: str | None) -> "AdapterBank":
        raise NotImplementedError

    @classmethod
    def _open(cls, registry: Registry, base: str | None, device: str, lazy: bool) -> "AdapterBank":
        raise NotImplementedError

    @property
    def path(self) -> Path:
        return self.registry.root

    @functools.cached_property
    def device(self):
        """The torch device modules run on (resolved from `device=` when first needed)."""
        from .core.models import resolve_device

        return resolve_device(self._device_spec)

    @property
    def base_id(self) -> str:
        return self.registry.manifest["base"]["id"]

    def __repr__(self) -> str:
        try:
            detail = f"base={self.base_id!r}, tasks={len(self.registry.read_tasks())}"
        except AdapterBankError:
            detail = "gone"
        return f"{type(self).__name__}({str(self.path)!r}, {detail})"

    def __getattr__(self, name: str) -> Any:
        """Operations of the other family fail with one line saying which kind of bank has them."""
        if not name.startswith("_"):
            for family in AdapterBank._families.values():
                if family is not type(self) and hasattr(family, name):
                    raise UnsupportedOperationError(f"{name} needs a {family.title} (create one with {family.create_hint}); "
                                                    f"bank {self.path} is a {self.title} over {self.base_id}")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- tasks ----------------------------------------------------------------------------------
    def tasks(self) -> list[TaskInfo]:
        """Every task, in the order they were added. A damaged task (its task.json missing or failing its
        checksum) is left out with an AdapterBankWarning naming it and the command that removes it: the
        other tasks keep answering."""
        records, damaged = self.registry.scan_tasks()
        for name in damaged:
            warnings.warn(self.registry.damaged_message(name), AdapterBankWarning, stacklevel=2)
        return [TaskInfo(name, self.registry.tasks_dir / name, record) for name, record in records.items()]

    def labels(self) -> list[str]:
        """Every label of every task, in the order the tasks were added (a label two tasks share, once)."""
        return list(dict.fromkeys(label for task in self.tasks() for label in task.labels))

    def task(self, name: str) -> TaskInfo:
        directory = self.registry.task_dir(name)
        return TaskInfo(name, directory, self.registry.read_task(name))

    def remove_task(self, name: str) -> None:
        """Remove a task and its files (a damaged task too); it is no longer routed to from the next call on."""
        self.registry.remove_task(name)
        if self.registry.read_tasks() and (self.path / INDEX_FILE).exists():
            self._save_index()

    def import_adapter(self, name: str, adapter: str | os.PathLike, examples, force_base: bool = False,
                       labels: Sequence[str] | None = None) -> TaskInfo:
        """Add a PEFT adapter trained elsewhere as task `name` (see importing.py): it must fit the base;
        `examples` give its router statistics (prompts or texts; labelled texts for a classification bank,
        whose adapter brings its head: `labels` names its outputs when the folder has no labels.json)."""
        from .importing import import_adapter

        return import_adapter(self, name, adapter, examples, force_base=force_base,
                              labels=list(labels) if labels is not None else None)

    def verify(self) -> VerifyReport:
        """Every file of the bank against its recorded checksum (see store/verify.py)."""
        return verify_bank(self.path)

    def _config(self, config: Any, settings: dict[str, Any]) -> Any:
        """The training config of a new task: `config` as given, or built from keyword settings
        (`objective=`, `kind=`, the kind's hyper-parameters, the objective's fields)."""
        from .kinds import build_config

        objective = settings.pop("objective", None)
        if config is not None:
            if settings or objective is not None:
                raise AdapterBankError("give a config or keyword settings, not both")
            objective = getattr(config, "objective", None)
        objective = objective or next(iter(self.objectives))
        if objective not in self.objectives:
            owner = next((f for f in AdapterBank._families.values() if objective in f.objectives), None)
            if owner is None:
                known = [o for f in AdapterBank._families.values() for o in f.objectives]
                raise AdapterBankError(f"unknown objective {objective!r}; choose one of: {', '.join(known)}")
            raise AdapterBankError(f"--objective {objective} needs a {owner.title} (create one with {owner.create_hint}); "
                                   f"bank {self.path} is a {self.title}: use --objective {' or '.join(self.objectives)}")
        if config is None:
            return build_config(self.objectives[objective], self.family, settings)
        if not isinstance(config, self.objectives[objective]):
            raise AdapterBankError(f"config must be a {self.objectives[objective].__name__}, got {type(config).__name__}")
        return dataclasses.replace(config)  # validated again, and the caller's object is never changed

    def _peft_base(self, info: TaskInfo) -> str:
        """The base a module's PEFT export names: one that loads offline (each family says which)."""
        raise NotImplementedError

    def _peft_extra(self, info: TaskInfo, directory: Path) -> None:
        """Family files beside an exported PEFT module (a classifier's head and labels)."""

    def _export_peft(self, out: str | os.PathLike, info: TaskInfo | None, base_name: str | None) -> Path:
        """`export --peft`, for both families: the module as a PEFT directory naming `base_name` (default:
        `_peft_base`) as its base, with the family's extra files."""
        from .kinds import write_peft_dir
        from .store.files import write_new_dir

        if info is None:
            raise AdapterBankError("--peft exports a module: name it with --task (or export every module with --all)")
        self._check_task(info.name, info)

        def fill(staging: Path) -> None:
            write_peft_dir(info.path, staging, base_name or self._peft_base(info))
            self._peft_extra(info, staging)

        return write_new_dir(out, fill, what="--out")

    def export_all(self, out: str | os.PathLike, base_name: str | None = None) -> Path:
        """Every module as a PEFT directory (`OUT/<task>/`), plus `OUT/serving.json`: for each base the
        modules run on, the vLLM command line (`--lora-modules name=path ...`) and the LoRAX launcher and
        request fields that load them. Atomic, like every export."""
        from .kinds import write_peft_dir
        from .store.files import ensure_new_dir, write_json_atomic, write_new_dir

        ensure_new_dir(out, "--out")
        tasks = [info for info in self.tasks() if info.kind is not None]
        if not tasks:
            raise AdapterBankError(f"bank {self.path} has no modules to export")
        for info in tasks:
            self._check_task(info.name, info)
        target = Path(out).expanduser().resolve()

        def fill(staging: Path) -> None:
            groups: dict[str, list[TaskInfo]] = {}
            for info in tasks:
                base = base_name or self._peft_base(info)
                (staging / info.name).mkdir()
                write_peft_dir(info.path, staging / info.name, base)
                self._peft_extra(info, staging / info.name)
                groups.setdefault(base, []).append(info)
            write_json_atomic(staging / SERVING_FILE, {"bank": str(self.path.resolve()), "family": self.family,
                                                       "bases": [self._serving(base, infos, target) for base, infos in groups.items()]})

        return write_new_dir(out, fill, what="--out")

    def _serving(self, base: str, infos: list[TaskInfo], out: Path) -> dict:
        """How GPU engines load one base's modules from `out` (causal banks; a classifier has no engine to hand off to)."""
        return {"base": base, "modules": {info.name: str(out / info.name) for info in infos}}

    # -- routing --------------------------------------------------------------------------------
    def router_features(self, texts: Sequence[str]):
        """[len(texts), D] features the router scores."""
        return self._router_features(texts, self._records())

    def _router_features(self, texts: Sequence[str], records: dict[str, TaskInfo]):
        """The family's router features of `texts`, given the tasks on disk now."""
        raise NotImplementedError

    def route(self, texts: Sequence[str], method: str | None = None, ood_quantile: float | None = None,
              top_k: int = SHOWN_CANDIDATES) -> list:
        """The router's view of each text: candidate tasks best first with probabilities, and whether the
        text is in scope of the best one (routing.index.Route objects). Nothing is run but the router."""
        texts = as_texts(texts)
        method, quantile = self._router_settings(method, ood_quantile)
        return self._route(self._records(), texts, method, quantile, top_k)

    def _route(self, records: dict[str, TaskInfo], texts: Sequence[str], method: str, quantile: float,
               top_k: int = SHOWN_CANDIDATES) -> list:
        from .routing.index import Route

        records, index = self._with_pending(records, self._index(records) if records else None)
        if not records or not texts:
            return [Route([], [], in_scope=False) for _ in texts]
        return index.route(self._router_features(texts, records), top_k=min(top_k, len(records)), method=method,
                           ood_quantile=quantile)

    def _records(self) -> dict[str, TaskInfo]:
        return {info.name: info for info in self.tasks()}

    def _with_pending(self, records: dict[str, TaskInfo], index):
        """(records, index) that answer now: the tasks on disk, plus what the family adds (a classification
        bank's pending pool, online/pool.py)."""
        return records, index

    def _router_settings(self, method: str | None, ood_quantile: float | None) -> tuple[str, float]:
        """(router method, out-of-scope quantile): the caller's, else bank.json's defaults, validated."""
        from .routing.methods import METHODS
        from .settings import check_number

        router = self.registry.manifest["router"]
        method = method or router["method"]
        if method not in METHODS:
            raise AdapterBankError(f"unknown router method {method!r}; choose one of: {', '.join(METHODS)}")
        quantile = router["ood_quantile"] if ood_quantile is None else ood_quantile
        check_number("ood_quantile", quantile, minimum=0)
        if not quantile < 1:
            raise AdapterBankError(f"ood_quantile must be in [0, 1), got {quantile}")
        return method, quantile

    def _save_index(self) -> None:
        """Writers (add-task, remove) save the derived router index for the next open; reads never write.
        A failed save (disk full, read-only) only warns: the task is in, and readers rebuild the index."""
        from .routing.index import save_index

        problem = save_index(self.path, self._index(self._records()))
        if problem is not None:
            warnings.warn(f"the router index was not saved ({problem}); the bank answers all the same, "
                          "rebuilding it in memory when opened", AdapterBankWarning, stacklevel=3)

    def _index(self, records: dict[str, TaskInfo]):
        """The router index over `records`, rebuilt or extended when the tasks on disk changed."""
        from .routing.index import sync_index

        current = {name: info.record.get("id", "") for name, info in records.items()}
        if self._router is None or current != self._synced:
            dim = self.registry.manifest["router"]["feature_dim"]
            tasks = {name: (task_id, records[name].path) for name, task_id in current.items()}
            bank = weakref.ref(self)  # the index keeps `verify` (its out-of-scope factors are read lazily): a strong
            # reference would make bank -> index -> verify -> bank a cycle, and a dropped bank would hold its model
            # and its memory-mapped files (deleted ones too) until the garbage collector ran
            self._router = sync_index(self.path, tasks, dim, cached=self._router,
                                      verify=lambda name: bank()._check_task(name, records[name], router=True))
            self._synced = current
        return self._router

    def _check_task(self, name: str, info: TaskInfo, router: bool = False) -> None:
        """Before a task's files are first read they must match the sha256 in its task.json: its router
        statistics (`router=True`, read for the index) or the module's files (read on first load)."""
        from .routing.statistics import ROUTER_FILE

        files = [ROUTER_FILE] if router else sorted(f for f in info.record.get("files", {}) if f != ROUTER_FILE)
        self.registry.check_files(name, info.record, files)

    def _require_task(self, task: str | None, records: dict[str, TaskInfo]) -> None:
        if task is not None and task not in records:
            raise TaskNotFoundError(f"no task named {task!r} in bank {self.path}")


def as_texts(texts: str | Sequence[str]) -> Sequence[str]:
    """Texts to route or label: a single string is one text; anything but strings is refused by position."""
    if isinstance(texts, str):
        return [texts]
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(f"text #{i + 1}: expected a string, got {type(text).__name__}")
    return texts
