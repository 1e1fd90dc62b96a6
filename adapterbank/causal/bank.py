"""The causal-LM side of AdapterBank: domain modules, routed generation, merges into versioned bases, export.

A causal bank keeps its base as versions under `bases/` (versions.py). Modules are pinned to the base
version they were trained on: they keep serving on it after later merges (generation loads that
version), `merge` takes only modules of the current version unless told to re-target them, and
`list` flags modules whose version is no longer current. Routing uses the bank's router encoder
(all-MiniLM-L6-v2 by default), not the base: merges never change what the router has learned.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Sequence

from .. import __version__
from .. import faults
from ..errors import AdapterBankError, BaseMismatchError, DataError, TaskNotFoundError
from ..core.models import Base


class CausalBankMixin:
    """Methods of AdapterBank that only causal-LM banks support (mixed in; see bank.py)."""

    # -- base versions --------------------------------------------------------------------------
    @property
    def is_causal(self) -> bool:
        from ..store.versions import is_versioned

        return is_versioned(self.registry.manifest)

    def _require_causal(self, what: str) -> None:
        if not self.is_causal:
            raise AdapterBankError(f"{what} needs a causal-LM bank (`adapterbank init BANK --base smollm2-135m`); "
                                   f"bank {self.path} is a classification bank over {self.base_id}")

    def base_versions(self) -> list[dict]:
        """Every base version, oldest first, with its lineage; `current` marks the one in use."""
        from ..store.versions import all_versions, current_version

        self._require_causal("base versions")
        current = current_version(self.registry.manifest)
        return [{**{k: v for k, v in r.items() if k != "files"}, "current": r["version"] == current}
                for r in all_versions(self.registry.manifest)]

    @property
    def current_base_version(self) -> str:
        from ..store.versions import current_version

        self._require_causal("base versions")
        return current_version(self.registry.manifest)

    def base_at(self, version: str) -> Base:
        """A base version, loaded (files checked against bank.json) on first use and kept."""
        from ..store.versions import load_version, version_record

        record = version_record(self.registry.manifest, version)
        if version not in self._versions:
            model, tokenizer = load_version(self.registry, version, self.device)
            self._versions[version] = Base(self.base_id, model, tokenizer, record["fingerprint"])
        return self._versions[version]

    def rollback(self, version: str) -> None:
        """Make an earlier (or later) base version current again. No version's files change."""
        from ..store.versions import set_current

        self._require_causal("rollback")
        set_current(self.registry, version)

    # -- training -------------------------------------------------------------------------------
    def _add_clm_task(self, name: str, train, eval, rank: int, epochs: int | None, max_steps: int | None,
                      lr: float | None, batch_size: int, block_size: int, seed: int, progress: bool):
        from ..core.encoding import pad_id_of
        from .training import (DEFAULT_CLM_LR, CLMConfig, router_texts, make_blocks, perplexity,
                                        split_held_out, train_clm)
        from ..routing.index import class_statistics, save_statistics

        self._require_causal("add-task --objective clm")
        texts, source = _corpus(train)
        eval_texts, eval_source = _corpus(eval) if eval is not None else (None, None)
        version = self.current_base_version
        base = self.base_at(version)
        blocks = make_blocks(base.tokenizer, texts, block_size, source)
        if eval_texts is not None:
            held_out = make_blocks(base.tokenizer, eval_texts, block_size, eval_source)
        else:
            blocks, held_out = split_held_out(blocks, seed)
        config = CLMConfig(rank=rank, block_size=block_size, epochs=epochs or 1, max_steps=max_steps,
                           lr=lr or DEFAULT_CLM_LR, batch_size=batch_size, seed=seed)
        started = time.perf_counter()
        features = self.router_features(router_texts(base.tokenizer, blocks, ROUTER_SAMPLE_BLOCKS, seed))
        stats = class_statistics(features, [0] * len(features), 1)
        faults.point("lower-pass")
        pad = pad_id_of(base.tokenizer)
        before = perplexity(base.model, held_out, pad)
        trained = train_clm(base.model, blocks, pad, config, progress=progress, description=f"add-task {name}")
        after = perplexity(trained.peft_model, held_out, pad)
        faults.point("trained")
        record = {
            "objective": "clm", "kind": "lora", "labels": [], "adapterbank_version": __version__,
            "base": {"id": self.base_id, "version": version, "fingerprint": base.fingerprint},
            "hyperparameters": trained.hyperparameters,
            "metrics": {**trained.metrics, "perplexity_before": round(before, 4), "perplexity_after": round(after, 4),
                        "held_out_blocks": len(held_out), "held_out_tokens": sum(len(b) - 1 for b in held_out),
                        "held_out_source": eval_source or "5% of the training blocks"},
            "data": {"train_fingerprint": _texts_fingerprint(texts), "train_texts": len(texts),
                     "train_blocks": len(blocks), "train_source": source},
        }
        with self.registry.stage_task(name, record) as staging:
            trained.peft_model.save_pretrained(str(staging))
            (staging / "README.md").unlink(missing_ok=True)
            faults.point("saved-module")
            save_statistics(staging, stats)
            faults.point("saved-router")
            record["metrics"]["add_task_seconds"] = round(time.perf_counter() - started, 3)
        self._index({info.name: info for info in self.tasks()})
        return self.task(name)

    # -- routing --------------------------------------------------------------------------------
    def router_features(self, texts: Sequence[str]):
        """The router encoder's features of `texts` (mean pools of its lower layers, as for classification)."""
        from ..core.backbone import SplitEncoder
        from ..core.encoding import map_batches, tokenize
        from ..core.models import load_base

        if self._router_encoder is None:
            spec = self.registry.manifest["router"]["encoder"]
            encoder = load_base(spec, self.device)
            expected = self.registry.manifest["router"].get("encoder_fingerprint")
            if encoder.fingerprint != expected:
                raise BaseMismatchError(f"router encoder {spec!r} does not match the one this bank's router was built with")
            self._router_encoder = (SplitEncoder(encoder.model, self.upper_layers), encoder.tokenizer)
        split, tokenizer = self._router_encoder
        ids = tokenize(tokenizer, texts)
        return map_batches(lambda input_ids, mask: split.lower(input_ids, mask).router_features, ids, tokenizer, self.device)

    def route(self, texts: Sequence[str], method: str | None = None, ood_quantile: float | None = None):
        """The router's view of each text on a causal bank: candidate domains best first, with
        probabilities, and whether the text is in scope of the best one (routing.Route objects)."""
        return self._route({info.name: info for info in self.tasks()}, texts, *self._router_settings(method, ood_quantile))

    def _route(self, records: dict, texts: Sequence[str], method: str, quantile: float):
        from ..routing.index import Route

        if not records:
            return [Route([], [], in_scope=False) for _ in texts]
        return self._index(records).route(self.router_features(texts), top_k=min(3, len(records)), method=method,
                                          ood_quantile=quantile)

    # -- generation -----------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64, task: str | None = None,
                 method: str | None = None, ood_quantile: float | None = None, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, batch_size: int = 16,
                 progress: bool = False):
        """Continue each prompt with the module of the domain the router finds it closest to.

        `task` forces one module; a prompt no domain matches (the out-of-scope threshold, as for
        classification) is continued by the current base alone. Returns generation.Generation objects."""
        import torch

        from .generation import Generation
        from ..routing.index import Route

        self._require_causal("generate")
        if isinstance(prompts, str):
            prompts = [prompts]
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str) or not prompt:
                raise DataError(f"prompt #{i + 1}: expected a non-empty string")
        if max_new_tokens < 1 or batch_size < 1:
            raise AdapterBankError("max_new_tokens and batch_size must be at least 1")
        method, quantile = self._router_settings(method, ood_quantile)
        records = {info.name: info for info in self.tasks()}
        if task is not None and task not in records:
            raise TaskNotFoundError(f"no task named {task!r} in bank {self.path}")
        if not prompts:
            return []
        routes = [Route([task], [1.0]) for _ in prompts] if task is not None else self._route(records, prompts, method, quantile)
        current = self.current_base_version
        chosen = [r.tasks[0] if r.in_scope and r.tasks else None for r in routes]
        versions = [records[c].record["base"]["version"] if c else current for c in chosen]
        options = {"max_new_tokens": max_new_tokens, "do_sample": do_sample}
        if do_sample:
            options.update(temperature=temperature, top_p=top_p)
            torch.manual_seed(seed)
        texts: list[str | None] = [None] * len(prompts)
        for version in dict.fromkeys(versions):
            rows = [i for i, v in enumerate(versions) if v == version]
            if version not in self._generators:
                from .generation import VersionGenerator

                base = self.base_at(version)
                self._generators[version] = VersionGenerator(base.model, base.tokenizer)
            out = self._generators[version].generate(
                [prompts[i] for i in rows], [chosen[i] for i in rows], {n: info.path for n, info in records.items()},
                batch_size, options, check=lambda n: self._check_task(n, records[n]), progress=progress)
            for i, text in zip(rows, out):
                texts[i] = text
        return [Generation(text, c, round(r.probabilities[0], 6) if c else 0.0, v, list(zip(r.tasks, r.probabilities)))
                for text, c, r, v in zip(texts, chosen, routes, versions)]

    # -- merging --------------------------------------------------------------------------------
    def merge(self, tasks: Sequence[str], method: str = "linear", weights: Sequence[float] | None = None,
              density: float | None = None, seed: int = 0, retarget: bool = False, svd_rank: int | None = None) -> dict:
        """Merge LoRA modules into the current base, creating and selecting the next base version.

        Every module must have been trained on the current base version; `retarget=True` merges modules
        of older versions anyway (their updates land on weights they were not trained against).
        `svd_rank`: rank the `svd` method truncates the summed update to (default: the largest module rank)."""
        from .merging import DEFAULT_DENSITY, check_method, lora_deltas, merge_into
        from ..core.models import fingerprint_model
        from ..store.versions import save_version

        self._require_causal("merge")
        tasks = list(dict.fromkeys(tasks))
        if not tasks:
            raise AdapterBankError("merge: name at least one task (--tasks a,b,...)")
        density = DEFAULT_DENSITY if density is None else density
        check_method(method, density, weights, len(tasks))
        if svd_rank is not None and svd_rank < 1:
            raise AdapterBankError(f"svd_rank must be at least 1, got {svd_rank}")
        weights = list(weights) if weights is not None else [1.0] * len(tasks)
        version = self.current_base_version
        infos = [self.task(name) for name in tasks]
        for info in infos:
            if info.record.get("objective") != "clm" or info.kind != "lora":
                raise AdapterBankError(f"task {info.name!r} is not a causal-LM LoRA module; only those merge into the base")
            trained_on = info.record["base"]["version"]
            if trained_on != version and not retarget:
                raise BaseMismatchError(f"task {info.name!r} was trained on base {trained_on}, the current base is {version}: "
                                        "retrain it on the current base (add-task) or pass --retarget to merge it anyway")
            self._check_task(info.name, info)
        base = self.base_at(version)
        model = copy.deepcopy(base.model)
        rank = svd_rank or max(int(info.record["hyperparameters"]["rank"]) for info in infos)
        changed = merge_into(model, [lora_deltas(info.path) for info in infos], method, weights, density, seed, rank)
        faults.point("merged-in-memory")
        lineage = {"parent": version, "method": method, "weights": weights, "density": density, "seed": seed,
                   **({"svd_rank": rank} if method == "svd" else {}),
                   "tasks": [{"name": i.name, "id": i.record.get("id"), "trained_on": i.record["base"]["version"]} for i in infos],
                   "retarget": retarget, "weights_changed": changed}
        record = save_version(self.registry, model, base.tokenizer, fingerprint_model(model), lineage)
        self._versions[record["version"]] = Base(self.base_id, model, base.tokenizer, record["fingerprint"])
        return {k: v for k, v in record.items() if k != "files"}

    # -- export ---------------------------------------------------------------------------------
    def export(self, out: str | os.PathLike, task: str | None = None, base_version: str | None = None,
               peft: bool = False) -> Path:
        """Write a plain Hugging Face checkpoint (base version + the task's module merged in), or with
        `peft=True` the module as a PEFT directory. Returns the output directory."""
        from ..export import check_target, merged_model, publish, write_head, write_peft_dir
        from ..store.versions import version_dir, write_checkpoint

        check_target(Path(out))
        info = self.task(task) if task is not None else None
        if info is not None:
            self._check_task(info.name, info)
        if peft:
            if info is None:
                raise AdapterBankError("--peft exports a module: name it with --task")
            trained_on = info.record.get("base", {}).get("version")
            base_name = self.base_id if trained_on in (None, "v0") else str(version_dir(self.registry, trained_on).resolve())
            return publish(Path(out), lambda staging: write_peft_dir(info.path, staging, base_name))
        if info is not None and info.kind != "lora":
            raise AdapterBankError(f"task {info.name!r} is a {info.kind or 'router-only'} task; only LoRA merges into "
                                   "weights (use --peft to export the module itself)")
        if not self.is_causal:
            if base_version is not None:
                raise AdapterBankError("--base-version applies to causal-LM banks only")
            base = self.base
            model = merged_model(base.model, info.path) if info is not None else base.model
            return publish(Path(out), lambda staging: (write_checkpoint(staging, model, base.tokenizer),
                                                      info and write_head(info.path, staging, info.labels)))
        version = base_version or (info.record["base"]["version"] if info is not None else self.current_base_version)
        if info is not None and info.record["base"]["version"] != version:
            raise BaseMismatchError(f"task {info.name!r} was trained on base {info.record['base']['version']}, not {version}; "
                                    "export it on its own base version (drop --base-version)")
        base = self.base_at(version)
        model = merged_model(base.model, info.path) if info is not None else base.model
        return publish(Path(out), lambda staging: write_checkpoint(staging, model, base.tokenizer))


ROUTER_SAMPLE_BLOCKS = 2000  # blocks per domain the router's statistics are estimated from


def _corpus(data) -> tuple[list[str], str]:
    from ..data import load_texts

    if isinstance(data, (list, tuple)):
        texts = list(data)
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"text #{i + 1}: expected a non-empty string")
        if not texts:
            raise DataError("<memory>: empty corpus (no texts)")
        return texts, "<memory>"
    if isinstance(data, (str, os.PathLike)):
        texts, _ = load_texts(data)
        return texts, str(data)
    raise AdapterBankError(f"expected a corpus path or a list of texts, got {type(data).__name__}")


def _texts_fingerprint(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(json.dumps(text, ensure_ascii=False).encode("utf-8"))
    return "sha256:" + digest.hexdigest()

