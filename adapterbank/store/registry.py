"""The bank on disk: `bank.json`, one directory per task, a lock for writers.

A task becomes visible only by an atomic rename of a fully written, checksummed directory, so a reader
never sees half a task. The set of tasks is the set of complete task directories; `bank.json` holds
what belongs to the bank as a whole (format, family, base model, router settings, base versions).

Every call sees the bank as it is on disk when it starts: tasks are listed afresh each time and
`bank.json` is re-read whenever the file changed (a merge or rollback by another process).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock

from .. import faults
from ..errors import BankError, IntegrityError, InvalidNameError, TaskExistsError, TaskNotFoundError
from .files import (check_sealed, fsync_dir, hash_files, make_readable, move_to_trash, read_json, read_sealed, seal,
                    sha256_file, staging_dir, storage_errors, sweep, utc_now, write_json_atomic, write_new_dir)

FORMAT_VERSION = 3  # 2: modules on the upper layers only, router statistics over lower-layer features; 3: sealed manifests
MANIFEST = "bank.json"
TASK_MANIFEST = "task.json"
TASKS = "tasks"
LOCK = ".bank.lock"
INDEX_FILE = "router_index.safetensors"  # derived: every task's router statistics in one file (routing/index.py)
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_RESERVED = {"con", "prn", "aux", "nul", "tasks", "bases"} | {f"{p}{i}" for p in ("com", "lpt") for i in range(10)}


def validate_task_name(name: str) -> str:
    """Task names become directory names: letters, digits, `_ . -`, at most 64 chars, no leading dot."""
    if not isinstance(name, str) or not _NAME_PATTERN.match(name) or ".." in name:
        raise InvalidNameError(
            f"invalid task name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
        )
    if name.lower().split(".")[0] in _RESERVED:
        raise InvalidNameError(f"invalid task name {name!r}: reserved name")
    return name


def family_of(manifest: dict) -> str:
    """`classifier` or `causal`; banks written before bank.json named its family are told apart by their
    base versions (only causal banks keep them)."""
    return manifest.get("family") or ("causal" if "base_versions" in manifest else "classifier")


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return status.st_ino, status.st_mtime_ns, status.st_size


class Registry:
    """One bank directory. Cheap to construct; tasks are read from disk on every call."""

    def __init__(self, root: Path, manifest: dict):
        self.root = Path(root)
        self._manifest = manifest
        self._stamp = _stamp(self.root / MANIFEST)
        self._records: dict[str, tuple[tuple, dict]] = {}  # task name -> (task.json's stamp, its record)

    # -- bank ---------------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, manifest: dict, fill: Callable[[Path], dict] | None = None) -> "Registry":
        """Create a new bank at `root` (absent, or an empty directory), atomically: `fill(staging)` may write
        more files first (a causal bank's base) and returns fields to add to bank.json."""
        def write(staging: Path) -> None:
            extra = fill(staging) if fill is not None else {}
            (staging / TASKS).mkdir()
            full = {"format_version": FORMAT_VERSION, "created_at": utc_now(), **manifest, **extra}
            write_json_atomic(staging / MANIFEST, seal(full))

        return cls.open(write_new_dir(root, write, what="bank directory"))

    @classmethod
    def open(cls, root: str | Path, check_manifest: bool = True) -> "Registry":
        """Open a bank; `check_manifest=False` (for `verify`) reads a bank.json whose checksum fails."""
        root = Path(root).expanduser()
        if not root.is_dir():
            raise BankError(f"{root}: no such bank (directory not found)")
        if not (root / MANIFEST).is_file():
            raise BankError(f"{root}: not a bank (no {MANIFEST}); create one with `adapterbank init`")
        return cls(root, _read_manifest(root / MANIFEST, check_manifest))

    @property
    def manifest(self) -> dict:
        """bank.json as it is on disk now (re-read, and checked, only when the file changed)."""
        stamp = _stamp(self.root / MANIFEST)
        if stamp is None:
            raise BankError(f"{self.root}: the bank is gone (moved or deleted while open): open it again where it is now")
        if stamp != self._stamp:
            self._manifest = _read_manifest(self.root / MANIFEST, check=True)
            self._stamp = stamp
        return self._manifest

    @property
    def family(self) -> str:
        return family_of(self.manifest)

    @property
    def tasks_dir(self) -> Path:
        return self.root / TASKS

    def update_manifest(self, change: Callable[[dict], dict]) -> dict:
        """Re-read bank.json, apply `change` and write it back sealed and atomically. Call with the lock held."""
        manifest = seal(change(read_sealed(self.root / MANIFEST)))
        with storage_errors(self.root / MANIFEST):
            write_json_atomic(self.root / MANIFEST, manifest)
        self._manifest, self._stamp = manifest, _stamp(self.root / MANIFEST)
        return manifest

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Writers hold this while they change what is visible (rename in/out of tasks/, bank.json)."""
        self.manifest  # noqa: B018 - a bank moved away fails here, before a lock file appears at its old path
        with storage_errors(self.root / LOCK, "cannot lock the bank:"):
            lock = FileLock(str(self.root / LOCK), timeout=600)
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    # -- tasks --------------------------------------------------------------------------------
    def read_tasks(self) -> dict[str, dict]:
        """Every complete task's task.json, by name, in the order the tasks were added. Damaged task
        directories (see `damaged_tasks`) are left out: one bad task does not take the bank down."""
        return self.scan_tasks()[0]

    def scan_tasks(self) -> tuple[dict[str, dict], dict[str, str]]:
        """(records of the complete tasks in the order they were added, {name: problem} of damaged ones:
        a task directory whose task.json is missing, unreadable or fails its checksum)."""
        self.manifest  # noqa: B018 - raises if the bank was moved or deleted while open
        if not self.tasks_dir.is_dir():
            raise BankError(f"{self.tasks_dir}: missing (run `adapterbank verify {self.root}`)")
        records, damaged, kept = {}, {}, {}
        for entry in self.tasks_dir.iterdir():
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            stamp = _stamp(entry / TASK_MANIFEST)
            known = self._records.get(entry.name)
            if stamp is not None and known is not None and known[0] == stamp:
                record = known[1]  # the same file as at the last read, checked then: not parsed again
            else:
                try:
                    record = self.read_task(entry.name)
                except BankError as exc:
                    damaged[entry.name] = str(exc)
                    continue
            records[entry.name] = record
            if stamp is not None:
                kept[entry.name] = (stamp, record)
        self._records = kept
        return dict(sorted(records.items(), key=lambda item: (item[1].get("sequence", 0), item[0]))), damaged

    def damaged_tasks(self) -> dict[str, str]:
        return self.scan_tasks()[1]

    def task_names(self) -> list[str]:
        """Complete tasks in the order they were added."""
        return list(self.read_tasks())

    def has_task(self, name: str) -> bool:
        return (self.tasks_dir / name / TASK_MANIFEST).is_file()

    def task_dir(self, name: str) -> Path:
        validate_task_name(name)
        self.manifest  # noqa: B018 - raises if the bank was moved or deleted while open
        if not self.has_task(name):
            if (self.tasks_dir / name).is_dir():
                raise BankError(self.damaged_message(name))
            raise TaskNotFoundError(f"no task named {name!r} in bank {self.root}")
        return self.tasks_dir / name

    def damaged_message(self, name: str) -> str:
        problem = self.damaged_tasks().get(name, "damaged")
        return (f"task {name!r} is damaged ({problem}); `adapterbank remove {self.root} {name}` removes it "
                f"(or restore the task from a backup)")

    def read_task(self, name: str) -> dict:
        return read_sealed(self.tasks_dir / name / TASK_MANIFEST)

    def check_files(self, name: str, record: dict, files: list[str]) -> None:
        """The named files of a task match the sha256 its task.json lists (IntegrityError naming the first that does not)."""
        listed = record.get("files", {})
        for filename in files:
            path = self.tasks_dir / name / filename
            if filename not in listed:
                raise IntegrityError(f"{path}: not listed in the task's task.json")
            if not path.is_file():
                raise IntegrityError(f"{path}: missing")
            if sha256_file(path) != listed[filename]:
                raise IntegrityError(f"{path}: sha256 mismatch: the file was changed, truncated or swapped since the task was added")

    def ensure_new_name(self, name: str) -> None:
        validate_task_name(name)
        self.manifest  # noqa: B018 - raises if the bank was moved or deleted while open
        if self.has_task(name):
            raise TaskExistsError(f"task {name!r} already exists in bank {self.root}")
        if (self.tasks_dir / name).exists():
            raise TaskExistsError(self.damaged_message(name))

    @contextlib.contextmanager
    def stage_task(self, name: str, record: dict) -> Iterator[Path]:
        """Yield an empty temp directory to write a task into; on clean exit, publish it atomically.

        `task.json` (with `record`, a unique id, a sequence number for ordering and each file's sha256)
        is written last, then the directory is renamed into `tasks/<name>` under the lock. On any error
        the temp dir is removed.
        """
        self.ensure_new_name(name)
        with storage_errors(self.tasks_dir):  # disk full, read-only: one line, and the staging dir is removed
            sweep(self.tasks_dir)
            sweep(self.root)  # temp files of atomic writes (bank.json, the router index) a killed writer left
            with staging_dir(self.tasks_dir, name) as staging:
                yield staging
                make_readable(staging)
                files = hash_files(staging)
                faults.point("hashed")
                with self.lock():
                    faults.point("locked")
                    self.ensure_new_name(name)
                    sequence = 1 + max((r.get("sequence", 0) for r in self.read_tasks().values()), default=0)
                    full = {"name": name, "id": uuid.uuid4().hex, "sequence": sequence, "created_at": utc_now(), **record,
                            "files": files}
                    write_json_atomic(staging / TASK_MANIFEST, seal(full))
                    faults.point("manifest-written")
                    os.rename(staging, self.tasks_dir / name)
                    fsync_dir(self.tasks_dir)
                    faults.point("renamed")

    def remove_task(self, name: str) -> None:
        """Rename the task out of sight (atomic), then delete its files."""
        validate_task_name(name)
        with self.lock():
            directory = self.tasks_dir / name
            if not directory.is_dir():  # a damaged task (no or bad task.json) can be removed too
                self.task_dir(name)  # raises TaskNotFoundError
            with storage_errors(directory, "cannot remove"):
                trash = move_to_trash(directory)
        shutil.rmtree(trash, ignore_errors=True)

    def verify_tasks(self) -> tuple[int, list[str]]:
        """(task directories checked, every problem found, one line each naming the file)."""
        problems: list[str] = []
        if not self.tasks_dir.is_dir():
            return 0, [f"{self.tasks_dir}: missing"]
        entries = [e for e in sorted(self.tasks_dir.iterdir()) if not e.name.startswith(".")]
        for entry in entries:
            try:
                if not entry.is_dir():
                    raise IntegrityError(f"{entry}: not a task directory (a stray file in {TASKS}/)")
                record = self.read_task(entry.name)
                if record.get("name") != entry.name:
                    raise IntegrityError(f"{entry / TASK_MANIFEST}: names task {record.get('name')!r}, not {entry.name!r}")
                self.check_files(entry.name, record, sorted(record.get("files", {})))
                extra = sorted(p.name for p in entry.iterdir() if p.name not in record.get("files", {}) and p.name != TASK_MANIFEST)
                if extra:
                    raise IntegrityError(f"{entry / extra[0]}: not part of the task (not listed in task.json)")
            except BankError as exc:
                problems.append(str(exc))
        return len(entries), problems


def _read_manifest(path: Path, check: bool) -> dict:
    manifest = read_json(path)
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BankError(f"{path}: unsupported format_version {version!r} (this adapterbank reads {FORMAT_VERSION})")
    if check:
        check_sealed(path, manifest)
    if not isinstance(manifest.get("base"), dict) or "id" not in manifest["base"]:
        raise BankError(f"{path}: field 'base' is missing or malformed")
    return manifest
