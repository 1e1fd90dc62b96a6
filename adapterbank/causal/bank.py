"""CausalBank: a causal LM whose base is versioned by merges, domain modules, routed generation, export.

A causal bank keeps its base as versions under `bases/` (store/versions.py). Modules are pinned to the
base version they were trained on: they keep serving on it after later merges (generation loads that
version), `merge` takes only modules of the current version unless told to re-target them, and
`list` flags modules whose version is no longer current. Routing uses the bank's router encoder
(all-MiniLM-L6-v2 by default), not the base: merges never change what the router has learned.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

from .. import faults
from ..version import __version__
from ..bank import AdapterBank, TaskInfo, as_texts
from ..core.models import DEFAULT_BASE, Base
from ..errors import AdapterBankError, BaseMismatchError, DataError
from ..store import versions
from ..store.registry import Registry
from .config import CLMConfig, GenerationSettings, SFTConfig

_GENERATION = GenerationSettings()  # the defaults, declared once in config.py


@dataclass
class Generation:
    """A prompt's continuation, the task whose module wrote it (None: the base) and the router's view."""

    text: str
    task: str | None
    probability: float
    base_version: str
    candidates: list[tuple[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"text": self.text, "task": self.task, "probability": self.probability, "base_version": self.base_version,
                "candidates": [{"task": t, "probability": p} for t, p in self.candidates]}


class CausalBank(AdapterBank, family="causal"):
    """A causal LM with versioned bases, one domain module per task, routed generation and merges."""

    title: ClassVar[str] = "causal-LM bank"
    create_hint: ClassVar[str] = "`adapterbank init BANK --base smollm2-135m`"
    objectives: ClassVar[dict[str, type]] = {"clm": CLMConfig, "sft": SFTConfig}

    def __init__(self, registry: Registry, device: str = "auto"):
        super().__init__(registry, device)
        self._versions: dict[str, Base] = {}  # loaded base versions
        self._generators: dict = {}  # base version -> generation.VersionGenerator
        self._router_encoder = None  # (SplitEncoder, tokenizer) of the router encoder

    @classmethod
    def _create(cls, path: Path, base: str, device: str, router_encoder: str | None) -> "CausalBank":
        """The bank is built in a temp dir beside `path` (base v0 saved as safetensors, bank.json) and
        renamed into place, so a failed or interrupted init leaves nothing behind."""
        from ..core.backbone import DEFAULT_UPPER_LAYERS, SplitEncoder
        from ..core.models import fingerprint_model, load_base, load_causal_lm, save_checkpoint
        from ..routing.methods import DEFAULT_PROMPT_METHOD, DEFAULT_PROMPT_OOD_QUANTILE

        model_id, model, tokenizer = load_causal_lm(base)
        encoder = load_base(router_encoder or DEFAULT_BASE, "cpu")
        if not SplitEncoder.supports(encoder.model):
            raise AdapterBankError(f"router encoder {router_encoder!r}: needs a BERT-like encoder")
        router_layers = SplitEncoder(encoder.model, DEFAULT_UPPER_LAYERS).router_layers
        fingerprint = fingerprint_model(model)
        manifest = {
            "adapterbank_version": __version__, "family": cls.family,
            "base": {"id": model_id, "fingerprint": fingerprint, "architecture": "causal-lm",
                     "model_type": getattr(model.config, "model_type", None), "hidden_size": model.config.hidden_size},
            "backbone": {"upper_layers": DEFAULT_UPPER_LAYERS, "router_layers": router_layers},
            "router": {"encoder": encoder.model_id, "encoder_fingerprint": encoder.fingerprint, "method": DEFAULT_PROMPT_METHOD,
                       "ood_quantile": DEFAULT_PROMPT_OOD_QUANTILE,
                       "feature_dim": len(router_layers) * encoder.model.config.hidden_size},
        }
        write = lambda directory: save_checkpoint(directory, model, tokenizer)  # noqa: E731
        registry = Registry.create(path, manifest, fill=lambda staging: versions.first_version(staging, write, fingerprint, model_id))
        bank = cls(registry, device=device)
        model.name_or_path = model.config._name_or_path = str(versions.version_dir(registry.root.resolve(), "v0"))
        bank._versions["v0"] = Base(model_id, model.to(bank.device), tokenizer, fingerprint)
        return bank

    @classmethod
    def _open(cls, registry: Registry, base: str | None, device: str, lazy: bool) -> "CausalBank":
        if base is not None:
            raise AdapterBankError(f"bank {registry.root} is a causal-LM bank: its base is stored in the bank "
                                   f"({versions.BASES}/), so it takes no base=/--base")
        bank = cls(registry, device=device)
        if not lazy:
            bank.base  # noqa: B018 - load and verify now
        return bank

    # -- base versions --------------------------------------------------------------------------
    @property
    def base(self) -> Base:
        """The current base version, loaded (files checked against bank.json) on first use."""
        return self.base_at(self.current_base_version)

    @property
    def current_base_version(self) -> str:
        """The version new modules train on and unpinned prompts run on (bank.json, as on disk now)."""
        return versions.current_version(self.registry.manifest)

    def base_versions(self) -> list[dict]:
        """Every base version, oldest first, with its lineage; `current` marks the one in use."""
        manifest = self.registry.manifest
        current = versions.current_version(manifest)
        return [{**{k: v for k, v in r.items() if k != "files"}, "current": r["version"] == current}
                for r in versions.all_versions(manifest)]

    def base_at(self, version: str) -> Base:
        """A base version, loaded (files checked against bank.json) on first use and kept."""
        from ..core.models import load_causal_checkpoint

        record = versions.version_record(self.registry.manifest, version)
        if version not in self._versions:
            versions.check_version_files(self.registry, version)
            model, tokenizer = load_causal_checkpoint(versions.version_dir(self.path, version), self.device)
            self._versions[version] = Base(self.base_id, model, tokenizer, record["fingerprint"])
        return self._versions[version]

    def merged_modules(self, version: str | None = None) -> dict[str, str]:
        """{task id: base version it was merged into} for the modules a base version (default: the current)
        already contains, through its lineage."""
        manifest = self.registry.manifest
        return versions.merged_modules(manifest, version or versions.current_version(manifest))

    def rollback(self, version: str) -> None:
        """Make an earlier (or later) base version current again. No version's files change."""
        versions.set_current(self.registry, version)

    # -- training -------------------------------------------------------------------------------
    def add_task(self, name: str, train, eval=None, *, config: CLMConfig | SFTConfig | None = None,  # noqa: A002 - the CLI's --eval
                 progress: bool = True, **settings: Any) -> TaskInfo:
        """Train a module and store it, pinned to the current base version; the held-out measure before
        and after training is stored in its metrics.

        Args:
            name: the task's name (letters, digits, `_ . -`, at most 64).
            train: `objective="clm"` (the default): unlabelled text, a .jsonl/.csv file with a `text` field,
                a .txt file (one text per line) or a list of strings. `objective="sft"`: instructions, a
                .jsonl file (or a list of objects) with `prompt`/`response` or OpenAI chat `messages` per line.
            eval: held-out data in the same forms; default: 5 % of the training data (at most 32 blocks or
                examples), kept out.
            config: a CLMConfig or SFTConfig; or give its fields as keywords (`objective=`, `kind=`, `epochs=`,
                `max_steps=`, `lr=`, `batch_size=`, `seed=`, clm's `block_size=`) with the kind's
                hyper-parameters (`rank=`, `virtual_tokens=`).
            progress: show a progress bar over the training steps.
        """
        from ..kinds import save_module
        from ..routing.statistics import save_statistics
        from .fitting import FITTERS

        self.registry.ensure_new_name(name)
        config = self._config(config, settings)
        started = time.perf_counter()
        version = self.current_base_version
        fitted = FITTERS[config.objective](self, name, train, eval, config, progress)
        record = {
            "objective": config.objective, "kind": config.kind, "labels": [], "adapterbank_version": __version__,
            "base": {"id": self.base_id, "version": version, "fingerprint": self.base_at(version).fingerprint},
            "config": dataclasses.asdict(config), "hyperparameters": fitted.trained.hyperparameters,
            "metrics": {**fitted.trained.metrics, **fitted.metrics}, "data": fitted.data,
        }
        with self.registry.stage_task(name, record) as staging:
            save_module(fitted.trained.peft_model, staging)
            faults.point("saved-module")
            save_statistics(staging, fitted.stats)
            faults.point("saved-router")
            record["metrics"]["add_task_seconds"] = round(time.perf_counter() - started, 3)
        self._save_index()  # for the next open; the task is in even if this fails
        return self.task(name)

    # -- routing --------------------------------------------------------------------------------
    def _router_features(self, texts: Sequence[str], records: dict[str, TaskInfo]):
        """The router encoder's features of `texts` (mean pools of its lower layers, as for classification)."""
        from ..core.backbone import SplitEncoder
        from ..core.encoding import map_batches, tokenize
        from ..core.models import load_verified

        if self._router_encoder is None:
            router = self.registry.manifest["router"]
            encoder = load_verified(router["encoder"], self.device, router.get("encoder_fingerprint"), "router encoder",
                                    "the one this bank's router was built with")
            self._router_encoder = (SplitEncoder(encoder.model, self.registry.manifest["backbone"]["upper_layers"]),
                                    encoder.tokenizer)
        split, tokenizer = self._router_encoder
        ids = tokenize(tokenizer, texts)
        return map_batches(lambda input_ids, mask: split.lower(input_ids, mask).router_features, ids, tokenizer, self.device)

    # -- generation -----------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], max_new_tokens: int = _GENERATION.max_new_tokens, task: str | None = None,
                 method: str | None = None, ood_quantile: float | None = None, do_sample: bool = False,
                 temperature: float = _GENERATION.temperature, top_p: float = _GENERATION.top_p,
                 seed: int = _GENERATION.seed, batch_size: int = _GENERATION.batch_size, progress: bool = False,
                 route_texts: Sequence[str] | None = None, base_only: bool = False,
                 on_text: Callable[[int, str], None] | None = None, stream: bool = False, rendered: bool | Sequence[bool] = False):
        """Answer each prompt with the module of the task the router finds it closest to.

        A prompt routed to an instruction (`sft`) module is put in the chat layout that module was trained
        on (one user turn); a domain (`clm`) module and the base continue the prompt as written.

        Args: `prompts` (a string is one prompt); `task` skips routing (every prompt uses its module);
            `method`, `ood_quantile`: router method and out-of-scope threshold (default from bank.json), a
            prompt no task matches goes to the current base; `do_sample`, `temperature`, `top_p`, `seed`:
            sampling instead of greedy; `batch_size`: prompts per batch (rows may use different modules);
            `route_texts`: route on these instead of the prompts; `base_only`: no module at all;
            `on_text(prompt index, piece)`: called from the generating thread with each prompt's text as it
            is generated (how a server streams the rows of one batch to different clients); `stream`: return
            an iterator of generation.Piece instead of the finished list; `rendered`: the prompts are already
            in the chat layout (one flag, or one per prompt).

        Returns generation.Generation objects (text, task, probability, base version, candidates), or with
        `stream=True` an iterator of Piece.
        """
        from ..routing.index import Route
        from .chat import render_prompt, single_turn

        if isinstance(prompts, str):
            prompts = [prompts]
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str) or not prompt:
                raise DataError(f"prompt #{i + 1}: expected a non-empty string")
        GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                           batch_size=batch_size)  # validates each value against its declared bounds
        method, quantile = self._router_settings(method, ood_quantile)
        records = self._records()
        self._require_task(task, records)
        if route_texts is not None:
            route_texts = as_texts(route_texts)
            if len(route_texts) != len(prompts):
                raise DataError(f"route_texts: {len(route_texts)} texts for {len(prompts)} prompts")
        flags = [rendered] * len(prompts) if isinstance(rendered, bool) else list(rendered)
        if len(flags) != len(prompts):
            raise DataError(f"rendered: {len(flags)} flags for {len(prompts)} prompts")
        if task is not None and base_only:
            raise AdapterBankError("give task= or base_only=True, not both")
        if stream and on_text is not None:
            raise AdapterBankError("give stream=True or on_text, not both")
        if not prompts:
            return iter(()) if stream else []
        if task is not None:
            routes = [Route([task], [1.0]) for _ in prompts]
        elif base_only:
            routes = [Route([], [], in_scope=False) for _ in prompts]
        else:
            routes = self._route(records, route_texts or prompts, method, quantile)
        chosen = [r.tasks[0] if r.in_scope and r.tasks else None for r in routes]
        tokenizer = self.base.tokenizer
        texts = [render_prompt(tokenizer, single_turn(p)) if c and not flag and self._chat_layout(records[c]) else p
                 for p, c, flag in zip(prompts, chosen, flags)]
        versions_used = [records[c].record["base"]["version"] if c else self.current_base_version for c in chosen]
        options = {"max_new_tokens": max_new_tokens, "do_sample": do_sample,
                   **({"temperature": temperature, "top_p": top_p} if do_sample else {})}
        run = lambda on_text=None: self._generate_rows(texts, chosen, versions_used, records, options,  # noqa: E731
                                                       seed if do_sample else None, batch_size, progress, on_text)
        if stream:
            from .generation import stream_pieces

            return stream_pieces(run, chosen)
        return [Generation(text, c, round(r.probabilities[0], 6) if c else 0.0, v, list(zip(r.tasks, r.probabilities)))
                for text, c, r, v in zip(run(on_text), chosen, routes, versions_used)]

    def _chat_layout(self, info: TaskInfo) -> bool:
        """Whether the task's module was trained on prompts in the chat layout (its objective says)."""
        config = self.objectives.get(info.objective or "")
        return bool(getattr(config, "chat_layout", False))

    def _generate_rows(self, texts: list[str], chosen: list, versions_used: list[str], records: dict, options: dict,
                       seed: int | None, batch_size: int, progress: bool, on_text=None) -> list[str]:
        """Generate every row, one batched pass per base version (modules are pinned to theirs)."""
        import torch

        from .generation import VersionGenerator

        if seed is not None:
            torch.manual_seed(seed)
        out: list[str] = [""] * len(texts)
        modules_at = {n: (info.path, info.kind) for n, info in records.items()}
        for version in dict.fromkeys(versions_used):
            rows = [i for i, v in enumerate(versions_used) if v == version]
            if version not in self._generators:
                base = self.base_at(version)
                self._generators[version] = VersionGenerator(base.model, base.tokenizer)
            row_text = (lambda r, piece, rows=rows: on_text(rows[r], piece)) if on_text is not None else None
            generated = self._generators[version].generate(
                [texts[i] for i in rows], [chosen[i] for i in rows], modules_at, batch_size, options,
                check=lambda n: self._check_task(n, records[n]), progress=progress, on_text=row_text)
            for i, text in zip(rows, generated):
                out[i] = text
        return out

    def chat(self, conversations: Sequence[Sequence[dict]], **options: Any):
        """Answer each conversation (OpenAI chat messages: `{"role": "system"|"user"|"assistant", "content"}`)
        with the module of the task its user turns are closest to. The base tokenizer's chat template is
        applied when it has one, else plain `role: content` lines. `options`: as for `generate`."""
        from .chat import chat_prompt

        pairs = [chat_prompt(self.base.tokenizer, messages, i + 1) for i, messages in enumerate(conversations)]
        return self.generate([p for p, _ in pairs], route_texts=[u for _, u in pairs], rendered=True, **options)

    # -- merging and export ---------------------------------------------------------------------
    def merge(self, tasks: Sequence[str], method: str = "linear", weights: Sequence[float] | None = None,
              density: float | None = None, seed: int = 0, retarget: bool = False, svd_rank: int | None = None) -> dict:
        """Merge modules into the current base, creating and selecting the next base version; returns
        its bank.json record (without file checksums).

        Args:
            tasks: the modules to merge (their kind must fold into weights as dense updates: LoRA).
            method: a merge method of causal/merging.py (`linear`, `ties`, `dare_linear`, `dare_ties`, `svd`).
            weights: one weight per task (default 1 each).
            density: ties/dare: the fraction of each update kept (default 0.5).
            seed: dare: the seed of its random drops (the same merge gives the same base).
            retarget: also merge modules trained on an older base version (their updates land on
                weights they were not trained against).
            svd_rank: svd: the rank the summed update is truncated to (default: the largest module rank).
        """
        import copy

        from ..core.models import fingerprint_model, save_checkpoint
        from ..kinds import get_kind
        from ..settings import MAX_SEED, check_number
        from .merging import check_mergeable, merge_into, method_options

        tasks = list(dict.fromkeys(tasks))
        if not tasks:
            raise AdapterBankError("merge: name at least one task (--tasks a,b,...)")
        options = method_options(method, density=density, svd_rank=svd_rank)
        if weights is not None and len(weights) != len(tasks):
            raise AdapterBankError(f"--weights gives {len(weights)} weight(s) for {len(tasks)} module(s)")
        for weight in weights or []:
            check_number("weights", weight)
        check_number("seed", seed, minimum=0, maximum=MAX_SEED, integer=True)
        weights = list(weights) if weights is not None else [1.0] * len(tasks)
        version = self.current_base_version
        infos = [self.task(name) for name in tasks]
        check_mergeable(infos, version, self.merged_modules(), retarget)
        for info in infos:
            self._check_task(info.name, info)
        base = self.base_at(version)
        model = copy.deepcopy(base.model)
        if "svd_rank" in options and options["svd_rank"] is None:  # default: the largest module rank
            options["svd_rank"] = max(int(info.record["hyperparameters"]["rank"]) for info in infos)
        deltas = [get_kind(info.kind).weight_deltas(info.path) for info in infos]
        changed = merge_into(model, deltas, method, weights, seed=seed, **options)
        faults.point("merged-in-memory")
        lineage = {"parent": version, "method": method, "weights": weights, "density": options.get("density"),
                   "seed": seed, **({"svd_rank": options["svd_rank"]} if "svd_rank" in options else {}),
                   "tasks": [{"name": i.name, "id": i.record.get("id"), "trained_on": i.record["base"]["version"]} for i in infos],
                   "retarget": retarget, "weights_changed": changed}
        record = versions.publish_version(self.registry, lambda d: save_checkpoint(d, model, base.tokenizer),
                                          fingerprint_model(model), lineage)
        self._versions[record["version"]] = Base(self.base_id, model, base.tokenizer, record["fingerprint"])
        return {k: v for k, v in record.items() if k != "files"}

    def export(self, out: str | os.PathLike, task: str | None = None, base_version: str | None = None,
               peft: bool = False, base_name: str | None = None) -> Path:
        """Write a plain Hugging Face checkpoint (a base version, with `task`'s module merged in when
        given): `AutoModelForCausalLM.from_pretrained(out)` loads it; or with `peft=True` the module as a
        PEFT directory naming the base it needs: the folder of the base version it was trained on (plain
        safetensors, loads offline; for the packaged SmolLM2 that is its dequantized Q4_1 GGUF), or
        `base_name` (e.g. the hub id, for an engine that has the original). Atomic: nothing is left at
        `out` on failure."""
        from ..core.models import save_checkpoint
        from ..kinds import merged_model
        from ..store.files import ensure_new_dir, write_new_dir

        ensure_new_dir(out, "--out")
        info = self.task(task) if task is not None else None
        if info is not None:
            self._check_task(info.name, info)
        if peft:
            return self._export_peft(out, info, base_name)
        if base_name is not None:
            raise AdapterBankError("--base-name applies to --peft exports (a merged checkpoint needs no base)")
        version = base_version or (info.record["base"]["version"] if info is not None else self.current_base_version)
        if info is not None and info.record["base"]["version"] != version:
            raise BaseMismatchError(f"task {info.name!r} was trained on base {info.record['base']['version']}, not {version}; "
                                    "export it on its own base version (drop --base-version)")
        base = self.base_at(version)
        model = merged_model(base.model, info.path) if info is not None else base.model
        return write_new_dir(out, lambda staging: save_checkpoint(staging, model, base.tokenizer), what="--out")

    def _peft_base(self, info: TaskInfo) -> str:
        """The folder of the base version the module was trained on (plain safetensors: loads offline)."""
        return str(versions.version_dir(self.path, info.record["base"]["version"]).resolve())

    def _serving(self, base: str, infos: list[TaskInfo], out: Path) -> dict:
        from .handoff import engine_commands

        ranks = [int(info.record.get("hyperparameters", {}).get("rank") or 8) for info in infos]
        return engine_commands(base, {info.name: str(out / info.name) for info in infos}, max(ranks))

