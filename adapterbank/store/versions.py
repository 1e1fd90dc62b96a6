"""Versioned bases of a causal-LM bank on disk: `bases/v0` is the model the bank was created over, each
merge adds the next version. A version is a plain Hugging Face checkpoint (config, tokenizer, safetensors),
written by the caller's `write(directory)`; this module never loads a model.

`bank.json` is the list of versions: each entry holds the sha256 of its files, a fingerprint of its
weights, and its lineage (parent version, merged modules, method, weights, date). A version exists only
once it is listed there, so a merge killed at any point leaves no new version (a directory it renamed
into place but never listed is an orphan, removed by the next merge). Rolling back moves
`current_base`; no version's files are ever rewritten.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from .. import faults
from ..errors import BankError, IntegrityError
from .files import (fsync_dir, hash_files, make_readable, move_to_trash, sha256_file, staging_dir, storage_errors, sweep,
                    utc_now)
from .registry import Registry

BASES = "bases"


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


def merged_modules(manifest: dict, version: str) -> dict[str, str]:
    """{task id: the version it was merged into} for every module a version contains: those merged into
    it and, through its lineage's parents, into its ancestors."""
    contained: dict[str, str] = {}
    while version is not None:
        record = version_record(manifest, version)
        for task in record["lineage"].get("tasks", []):
            contained.setdefault(task.get("id"), record["version"])
        version = record["lineage"].get("parent")
    contained.pop(None, None)
    return contained


def version_dir(root: Path, version: str) -> Path:
    return Path(root) / BASES / version


def _record(version: str, fingerprint: str, lineage: dict, files: dict[str, str]) -> dict:
    return {"version": version, "fingerprint": fingerprint, "created_at": utc_now(), "lineage": lineage, "files": files}


def first_version(root: Path, write: Callable[[Path], None], fingerprint: str, source: str) -> dict:
    """Write `bases/v0` under a bank being created (`root` is still its staging directory); the
    bank.json fields that list it."""
    directory = version_dir(root, "v0")
    directory.mkdir(parents=True)
    write(directory)
    return {"base_versions": [_record("v0", fingerprint, {"source": source}, hash_files(directory))], "current_base": "v0"}


def publish_version(registry: Registry, write: Callable[[Path], None], fingerprint: str, lineage: dict) -> dict:
    """Write the next base version with `write(directory)`, list it in bank.json and make it current
    (atomic: the files go to a temp dir, renamed to `bases/vN` under the lock, and only then listed)."""
    bases = registry.root / BASES
    with storage_errors(bases):  # disk full, read-only: one line, nothing of the new version left behind
        registry.manifest  # noqa: B018 - raises if the bank was moved or deleted while open
        bases.mkdir(exist_ok=True)
        sweep(bases)
        with staging_dir(bases, "version") as staging:
            write(staging)
            make_readable(staging)
            files = hash_files(staging)
            faults.point("base-saved")
            with registry.lock():
                version = f"v{len(all_versions(registry.manifest))}"  # another writer may have listed one since
                target = bases / version
                if target.exists():  # an orphan of a merge that died before listing it
                    shutil.rmtree(target)
                record = _record(version, fingerprint, lineage, files)

                def add(manifest: dict) -> dict:
                    manifest["base_versions"] = [*manifest.get("base_versions", []), record]
                    manifest["current_base"] = version
                    return manifest

                staging.rename(target)
                try:
                    fsync_dir(bases)
                    faults.point("base-renamed")
                    registry.update_manifest(add)
                except BaseException:  # not listed: take the directory back out, the bank stays as it was
                    shutil.rmtree(move_to_trash(target), ignore_errors=True)
                    raise
                faults.point("version-listed")
    return record


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
    directory = version_dir(registry.root, version)
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
    """Problems with the listed base versions' files (one line each); empty when all match bank.json."""
    problems = []
    for record in all_versions(registry.manifest):
        try:
            check_version_files(registry, record["version"])
        except BankError as exc:
            problems.append(str(exc))
    return problems


def unlisted_versions(registry: Registry) -> list[str]:
    """Version directories bank.json does not list: a merge killed after its rename (never read; the
    next merge removes it)."""
    bases = registry.root / BASES
    if not bases.is_dir():
        return []
    names = {record["version"] for record in all_versions(registry.manifest)}
    return [f"{entry}: base version directory not listed in bank.json (an interrupted merge; the next merge removes it)"
            for entry in sorted(bases.iterdir()) if not entry.name.startswith(".") and entry.name not in names]
