"""Versioned bases of a causal-LM bank: `bases/v0` is the model the bank was created over, each merge
adds the next version. A version is a plain Hugging Face checkpoint (config, tokenizer, safetensors).

`bank.json` is the list of versions: each entry holds the sha256 of its files, a fingerprint of its
weights, and its lineage (parent version, merged modules, method, weights, date). A version exists only
once it is listed there, so a merge killed at any point leaves no new version (a directory it renamed
into place but never listed is an orphan, removed by the next merge). Rolling back moves
`current_base`; no version's files are ever rewritten.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from .. import faults
from ..errors import BankError, IntegrityError
from .registry import Registry, fsync_dir, utc_now, sha256_file

BASES = "bases"
_TEMP_PREFIX = ".tmp-"


def is_versioned(manifest: dict) -> bool:
    """Causal-LM banks keep versioned bases; classification banks use their base as loaded."""
    return "base_versions" in manifest


def all_versions(manifest: dict) -> list[dict]:
    return list(manifest.get("base_versions", []))


def current_version(manifest: dict) -> str:
    return manifest["current_base"]


def version_record(manifest: dict, version: str) -> dict:
    for record in all_versions(manifest):
        if record["version"] == version:
            return record
    known = ", ".join(r["version"] for r in all_versions(manifest)) or "none"
    raise BankError(f"no base version {version!r} in this bank (versions: {known})")


def version_dir(registry: Registry, version: str) -> Path:
    return registry.root / BASES / version


def save_version(registry: Registry, model, tokenizer, fingerprint: str, lineage: dict, make_current: bool = True) -> dict:
    """Write `model` + `tokenizer` as the next base version and list it in bank.json (atomic: the files
    are written to a temp dir, renamed to `bases/vN`, and only then listed)."""
    bases = registry.root / BASES
    bases.mkdir(exist_ok=True)
    _remove_dead_temps(bases)
    staging = bases / f"{_TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        files = write_checkpoint(staging, model, tokenizer)
        faults.point("base-saved")
        with registry.lock():
            registry.manifest = Registry.open(registry.root).manifest  # another writer may have added one
            listed = {r["version"] for r in all_versions(registry.manifest)}
            version = f"v{len(listed)}"
            target = bases / version
            if target.exists():  # an orphan of a merge that died before listing it
                shutil.rmtree(target)
            os.rename(staging, target)
            fsync_dir(bases)
            faults.point("base-renamed")
            record = {"version": version, "fingerprint": fingerprint, "created_at": utc_now(), "lineage": lineage,
                      "files": files}

            def add(manifest: dict) -> dict:
                manifest["base_versions"] = [*manifest.get("base_versions", []), record]
                if make_current:
                    manifest["current_base"] = version
                return manifest

            registry.update_manifest(add)
            faults.point("version-listed")
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return record


def write_checkpoint(directory: Path, model, tokenizer) -> dict[str, str]:
    """Save a plain Hugging Face checkpoint (safetensors weights, JSON config, tokenizer); {file: sha256}."""
    from ..core.models import quiet_transformers

    with quiet_transformers():
        model.save_pretrained(str(directory), safe_serialization=True)
        tokenizer.save_pretrained(str(directory))
    return {p.name: sha256_file(p) for p in sorted(Path(directory).iterdir()) if p.is_file()}


def first_version(directory: Path, model, tokenizer, fingerprint: str, source: str) -> dict:
    """Write `bases/v0` under a bank being created; its bank.json entry."""
    files = write_checkpoint(Path(directory) / BASES / "v0", model, tokenizer)
    return {"version": "v0", "fingerprint": fingerprint, "created_at": utc_now(), "lineage": {"source": source},
            "files": files}


def set_current(registry: Registry, version: str) -> dict:
    """Make `version` the base that new modules train on and that generation uses (rollback / roll forward)."""
    with registry.lock():
        def point(manifest: dict) -> dict:
            version_record(manifest, version)  # raises for a version the bank does not list
            manifest["current_base"] = version
            return manifest

        return registry.update_manifest(point)


def check_version_files(registry: Registry, version: str) -> None:
    """Every file of a version matches the sha256 bank.json lists, and nothing else is there."""
    record = version_record(registry.manifest, version)
    directory = version_dir(registry, version)
    if not directory.is_dir():
        raise IntegrityError(f"{directory}: missing")
    for name, digest in record["files"].items():
        path = directory / name
        if not path.is_file():
            raise IntegrityError(f"{path}: missing")
        if sha256_file(path) != digest:
            raise IntegrityError(f"{path}: sha256 mismatch: a base version's files were changed since it was written")
    extra = sorted(p.name for p in directory.iterdir() if p.name not in record["files"])
    if extra:
        raise IntegrityError(f"{directory / extra[0]}: not part of base version {version}")


def verify_versions(registry: Registry) -> list[str]:
    """Problems with any listed base version's files (one line each); empty when all match bank.json."""
    problems = []
    for record in all_versions(registry.manifest):
        try:
            check_version_files(registry, record["version"])
        except BankError as exc:
            problems.append(str(exc))
    return problems


def load_version(registry: Registry, version: str, device="cpu"):
    """(model, tokenizer) of a base version, after checking its files against bank.json."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import torch

    from ..core.models import quiet_transformers

    check_version_files(registry, version)
    directory = str(version_dir(registry, version))
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForCausalLM.from_pretrained(directory, use_safetensors=True, dtype=torch.float32)
    model.requires_grad_(False)
    model.eval()
    return model.to(device), tokenizer


def _remove_dead_temps(bases: Path) -> None:
    from .registry import pid_alive

    for entry in bases.iterdir():
        if entry.name.startswith(_TEMP_PREFIX):
            pid = entry.name[len(_TEMP_PREFIX):].split("-")[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)
