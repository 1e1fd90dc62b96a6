"""`adapterbank import`: an adapter trained elsewhere (a PEFT run, the hub) becomes a task of the bank.

The adapter must fit the bank's base: safetensors only, a PEFT type one of the bank's kinds declares,
every target module present in the base, every tensor of the shape the base gives it; the base model
it names must be the bank's (refused unless `force_base`, for a user who knows the weights match).
Router statistics come from example inputs (prompts, or labelled texts for a classification bank), as
add-task computes them from training data. The task is then written, checksummed and listed exactly like
a trained one. Classification adapters bring their head: see classify/importing.py.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

from .data import as_corpus
from .errors import AdapterBankError, BaseMismatchError, DataError

MIN_EXAMPLES = 8  # example inputs needed for a task's router statistics (a mean and a spread)
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
CONVERT = ("python -c \"import torch, safetensors.torch as s; s.save_file(torch.load('adapter_model.bin', "
           "weights_only=True), 'adapter_model.safetensors')\"")


def read_adapter(directory: str | os.PathLike) -> tuple[Path, dict]:
    """(directory, adapter_config) of a PEFT adapter saved as safetensors; one-line errors otherwise."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise DataError(f"--adapter {directory}: not a directory (a PEFT adapter is a folder with {ADAPTER_CONFIG})")
    if not (directory / ADAPTER_WEIGHTS).is_file():
        if (directory / "adapter_model.bin").is_file():
            raise DataError(f"{directory / 'adapter_model.bin'}: pickled weights are never loaded here; convert them "
                            f"in that folder (if you trust the file) with: {CONVERT}")
        raise DataError(f"--adapter {directory}: no {ADAPTER_WEIGHTS}")
    try:
        config = json.loads((directory / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"--adapter {directory}: no {ADAPTER_CONFIG}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{directory / ADAPTER_CONFIG}: not valid JSON ({exc})") from None
    if not isinstance(config, dict) or "peft_type" not in config:
        raise DataError(f"{directory / ADAPTER_CONFIG}: no peft_type (not a PEFT adapter config)")
    return directory, config


def kind_of(config: dict, family: str, source: Path):
    """The bank kind whose PEFT type the adapter has, offered for this family."""
    from .kinds import KINDS

    for kind in KINDS.values():
        if kind.peft_type == config["peft_type"] and family in kind.families:
            return kind
    offered = sorted({k.peft_type for k in KINDS.values() if family in k.families})
    raise AdapterBankError(f"{source / ADAPTER_CONFIG}: a {config['peft_type']} adapter; this bank imports "
                           f"{', '.join(offered)} adapters")


def check_fits(base_model, directory: Path, config: dict) -> None:
    """Every tensor of the adapter has the name and shape PEFT gives it on `base_model` (target modules
    missing from the base, another architecture or another rank all fail here, naming the tensor)."""
    from peft import PeftConfig, get_peft_model, get_peft_model_state_dict
    from safetensors import safe_open

    from .kinds import quiet_peft

    try:
        peft_config = PeftConfig.from_pretrained(str(directory))
        with quiet_peft():
            expected = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(get_peft_model(copy.deepcopy(base_model), peft_config)).items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BaseMismatchError(f"{directory / ADAPTER_CONFIG}: does not fit this bank's base: {' '.join(str(exc).split())[:300]}") from None
    with safe_open(str(directory / ADAPTER_WEIGHTS), framework="pt") as handle:
        found = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    for key, shape in sorted(found.items()):
        if key not in expected:
            raise BaseMismatchError(f"{directory / ADAPTER_WEIGHTS}: tensor {key} has no place in this bank's base")
        if expected[key] != shape:
            raise BaseMismatchError(f"{directory / ADAPTER_WEIGHTS}: tensor {key} is {list(shape)}, the base needs {list(expected[key])}")
    missing = sorted(set(expected) - set(found))
    if missing:
        raise BaseMismatchError(f"{directory / ADAPTER_WEIGHTS}: {len(missing)} tensor(s) missing, e.g. {missing[0]}")


def base_names(bank) -> set[str]:
    """The names an adapter may give this bank's base: its id, where that loads from, its version folders."""
    from .core.models import load_location

    names = {bank.base_id, load_location(bank.base_id)}
    bases = bank.path / "bases"
    if bases.is_dir():
        names |= {str(p.resolve()) for p in bases.iterdir() if p.is_dir()}
    return {n.rstrip("/") for n in names}


def imported_record(bank, kind, config: dict, directory: Path, named: str, examples: int, source: str, **extra) -> dict:
    """The task record of an imported module (what both families store)."""
    return {
        "objective": "imported", "kind": kind.name, "labels": [],
        "base": {"id": bank.base_id, "fingerprint": bank.base.fingerprint,
                 **({"version": bank.current_base_version} if hasattr(bank, "current_base_version") else {})},
        "hyperparameters": {"rank": config.get("r"), "lora_alpha": config.get("lora_alpha"),
                            "target_modules": config.get("target_modules")},
        "imported": {"from": str(directory.resolve()), "base_model_name_or_path": named, "forced_base": named not in base_names(bank)},
        "data": {"router_examples": examples, "router_source": source},
        "metrics": {},
        **extra,
    }


# Each family brings an adapter in its own way: a causal module as it is, a classification module with its head
# and labels converted to the bank's top-layer layout (classify/importing.py). module:function, imported on use.
IMPORTERS = {"causal": "adapterbank.importing:import_causal", "classifier": "adapterbank.classify.importing:import_classifier"}


def import_adapter(bank, name: str, adapter: str | os.PathLike, examples, force_base: bool = False,
                   labels: list[str] | None = None):
    """Add the PEFT adapter at `adapter` as task `name`, routed by statistics of `examples`: for a causal
    bank a file of prompts/texts (.jsonl/.csv with `text`, or .txt) or a list of strings; for a
    classification bank labelled texts, as add-task reads them. `labels`: a classification adapter's
    label names in its classifier's output order (when the folder has no labels.json)."""
    import importlib

    bank.registry.ensure_new_name(name)
    directory, config = read_adapter(adapter)
    kind = kind_of(config, bank.family, directory)
    named = str(config.get("base_model_name_or_path") or "").rstrip("/")
    if named not in base_names(bank) and not force_base:
        raise BaseMismatchError(f"{directory / ADAPTER_CONFIG}: trained on base {named or '(not named)'!r}, this bank's "
                                f"base is {bank.base_id!r}; pass --force-base if the weights are the same")
    if labels is not None and bank.family != "classifier":
        raise AdapterBankError("--labels names a classification adapter's outputs; this is a causal-LM bank")
    module, function = IMPORTERS[bank.family].split(":")
    return getattr(importlib.import_module(module), function)(bank, name, directory, config, kind, examples, named, labels)


def check_examples(count: int, source: str) -> None:
    if count < MIN_EXAMPLES:
        raise DataError(f"{source}: {count} example input(s); the router needs at least {MIN_EXAMPLES} to learn "
                        "where this adapter's requests come from")


def import_causal(bank, name: str, directory: Path, config: dict, kind, examples, named: str, _labels=None):
    """A LoRA or prompt-tuning adapter of the causal base, copied as it is; routed by its example prompts."""
    from . import faults
    from .routing.statistics import class_statistics, save_statistics

    texts, source = as_corpus(examples)
    check_examples(len(texts), source)
    check_fits(bank.base.model, directory, config)
    stats = class_statistics(bank._router_features(texts, {}), [0] * len(texts), 1, held_out_scope=False)  # causal: cosine scope
    record = imported_record(bank, kind, config, directory, named, len(texts), source)
    with bank.registry.stage_task(name, record) as staging:
        shutil.copyfile(directory / ADAPTER_WEIGHTS, staging / ADAPTER_WEIGHTS)
        (staging / ADAPTER_CONFIG).write_text(json.dumps({**config, "base_model_name_or_path": bank.base_id}, indent=2) + "\n",
                                              encoding="utf-8")
        faults.point("saved-module")
        save_statistics(staging, stats)
    bank._save_index()
    return bank.task(name)
