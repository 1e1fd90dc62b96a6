"""The bank on disk: `bank.json`, one directory per task, atomic writes and a lock for writers.

A task becomes visible only by an atomic rename of a fully written, checksummed directory, so a reader
never sees half a task. The set of tasks is the set of complete task directories; `bank.json` holds
what belongs to the bank as a whole (format, base model, router settings).

Tamper evidence: `bank.json` and every `task.json` carry a `checksum` of their own content, and
`task.json` lists the sha256 of each file of the task. Manifests are checked whenever they are read,
a task's files whenever they are loaded (`check_files`), and `verify` checks a whole bank.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock

from .. import faults
from ..errors import BankError, IntegrityError, InvalidNameError, TaskExistsError, TaskNotFoundError

FORMAT_VERSION = 3  # 2: modules on the upper layers only, router statistics over lower-layer features; 3: sealed manifests
MANIFEST = "bank.json"
TASK_MANIFEST = "task.json"
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_RESERVED = {"con", "prn", "aux", "nul", "tasks", "bases"} | {f"{p}{i}" for p in ("com", "lpt") for i in range(10)}
_TEMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"


def validate_task_name(name: str) -> str:
    """Task names become directory names: letters, digits, `_ . -`, at most 64 chars, no leading dot."""
    if not isinstance(name, str) or not _NAME_PATTERN.match(name) or ".." in name:
        raise InvalidNameError(
            f"invalid task name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
        )
    if name.lower().split(".")[0] in _RESERVED:
        raise InvalidNameError(f"invalid task name {name!r}: reserved name")
    return name


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Let `write` fill a temp file beside `path`, then rename it over `path`: readers see the old
    file or the new one, never part of one. The temp file is removed if `write` fails."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write JSON atomically (write_atomic), fsynced before the rename."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())

    write_atomic(path, write)


def _content_checksum(payload: dict) -> str:
    body = {k: v for k, v in payload.items() if k != "checksum"}
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def seal(payload: dict) -> dict:
    """The manifest with a `checksum` of its own content, so an edit or a flipped bit is detected."""
    return {**{k: v for k, v in payload.items() if k != "checksum"}, "checksum": _content_checksum(payload)}


def check_sealed(path: Path, payload: dict) -> dict:
    """`payload` (read from `path`) if its checksum matches its content; IntegrityError naming the file otherwise."""
    if payload.get("checksum") != _content_checksum(payload):
        raise IntegrityError(f"{path}: checksum mismatch: the file was edited or damaged (run `adapterbank verify`)")
    return payload


def read_sealed(path: Path) -> dict:
    return check_sealed(path, read_json(path))


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            payload = json.load(handle)
    except FileNotFoundError:
        raise BankError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BankError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise BankError(f"{path}: expected a JSON object")
    return payload


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Registry:
    """One bank directory. Cheap to construct; every method reads the disk afresh."""

    def __init__(self, root: Path, manifest: dict):
        self.root = root
        self.manifest = manifest

    # -- bank ---------------------------------------------------------------------------------
    @staticmethod
    def ensure_creatable(root: str | Path) -> Path:
        """A bank may be created where nothing exists yet, or in an empty directory."""
        root = Path(root).expanduser()
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise BankError(f"{root}: already exists and is not an empty directory")
        return root

    @classmethod
    def create(cls, root: str | Path, manifest: dict, staged: bool = False) -> "Registry":
        """Create a new bank; refuses a path that exists and is not an empty directory, unless `staged`
        (a private temp directory the caller is filling, renamed into place when complete)."""
        root = Path(root).expanduser() if staged else cls.ensure_creatable(root)
        created_root = not root.exists()
        try:
            (root / "tasks").mkdir(parents=True, exist_ok=True)
            full = {"format_version": FORMAT_VERSION, "created_at": utc_now(), **manifest}
            write_json_atomic(root / MANIFEST, seal(full))
        except BaseException:
            shutil.rmtree(root if created_root else root / "tasks", ignore_errors=True)
            raise
        return cls(root, full)

    @classmethod
    def open(cls, root: str | Path, check_manifest: bool = True) -> "Registry":
        """Open a bank; `check_manifest=False` (for `verify`) reads a bank.json whose checksum fails."""
        root = Path(root).expanduser()
        if not root.is_dir():
            raise BankError(f"{root}: no such bank (directory not found)")
        if not (root / MANIFEST).is_file():
            raise BankError(f"{root}: not a bank (no {MANIFEST}); create one with `adapterbank init`")
        manifest = read_json(root / MANIFEST)
        version = manifest.get("format_version")
        if version == FORMAT_VERSION and check_manifest:
            check_sealed(root / MANIFEST, manifest)
        if version != FORMAT_VERSION:
            raise BankError(f"{root / MANIFEST}: unsupported format_version {version!r} (this adapterbank reads {FORMAT_VERSION})")
        if not isinstance(manifest.get("base"), dict) or "id" not in manifest["base"]:
            raise BankError(f"{root / MANIFEST}: field 'base' is missing or malformed")
        return cls(root, manifest)

    @property
    def tasks_dir(self) -> Path:
        return self.root / "tasks"

    def update_manifest(self, change: Callable[[dict], dict]) -> dict:
        """Re-read bank.json, apply `change` and write it back sealed and atomically. Call with the lock held."""
        manifest = seal(change(read_sealed(self.root / MANIFEST)))
        write_json_atomic(self.root / MANIFEST, manifest)
        self.manifest = manifest
        return manifest

    def lock(self) -> FileLock:
        """Writers hold this while they change what is visible (rename in/out of tasks/)."""
        return FileLock(str(self.root / ".bank.lock"), timeout=600)

    # -- tasks --------------------------------------------------------------------------------
    def read_tasks(self) -> dict[str, dict]:
        """Every complete task's task.json, by name, in the order the tasks were added."""
        if not self.tasks_dir.is_dir():
            return {}
        records = {entry.name: self.read_task(entry.name) for entry in self.tasks_dir.iterdir()
                   if not entry.name.startswith(".") and (entry / TASK_MANIFEST).is_file()}
        return dict(sorted(records.items(), key=lambda item: (item[1].get("sequence", 0), item[0])))

    def task_names(self) -> list[str]:
        """Complete tasks in the order they were added."""
        return list(self.read_tasks())

    def has_task(self, name: str) -> bool:
        return (self.tasks_dir / name / TASK_MANIFEST).is_file()

    def task_dir(self, name: str) -> Path:
        validate_task_name(name)
        if not self.has_task(name):
            raise TaskNotFoundError(f"no task named {name!r} in bank {self.root}")
        return self.tasks_dir / name

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

    def verify(self) -> tuple[int, list[str]]:
        """(tasks checked, every problem found, one line each naming the file): empty means intact."""
        problems = []
        try:
            read_sealed(self.root / MANIFEST)
        except BankError as exc:
            problems.append(str(exc))
        if not self.tasks_dir.is_dir():
            return 0, problems + [f"{self.tasks_dir}: missing"]
        entries = [e for e in sorted(self.tasks_dir.iterdir()) if not e.name.startswith(".")]
        for entry in entries:
            try:
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

    def ensure_new_name(self, name: str) -> None:
        validate_task_name(name)
        if self.has_task(name):
            raise TaskExistsError(f"task {name!r} already exists in bank {self.root}")

    @contextlib.contextmanager
    def stage_task(self, name: str, record: dict) -> Iterator[Path]:
        """Yield an empty temp directory to write a task into; on clean exit, publish it atomically.

        `task.json` (with `record`, a unique id, a sequence number for ordering and each file's sha256) is written last, then the
        directory is renamed into `tasks/<name>` under the lock. On any error the temp dir is removed.
        """
        self.ensure_new_name(name)
        self._clean_stale_temps()
        staging = self.tasks_dir / f"{_TEMP_PREFIX}{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        try:
            yield staging
            files = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
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
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def remove_task(self, name: str) -> None:
        """Rename the task out of sight (atomic), then delete its files."""
        with self.lock():
            source = self.task_dir(name)
            trash = self.tasks_dir / f"{_TRASH_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
            os.rename(source, trash)
            fsync_dir(self.tasks_dir)
        shutil.rmtree(trash, ignore_errors=True)

    def _clean_stale_temps(self) -> None:
        """Remove temp/trash dirs left by writers that died (their pid no longer runs)."""
        for entry in self.tasks_dir.iterdir():
            if entry.name.startswith(_TRASH_PREFIX):
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.name.startswith(_TEMP_PREFIX):
                pid = entry.name.rsplit("-", 2)[-2]
                if pid.isdigit() and not pid_alive(int(pid)):
                    shutil.rmtree(entry, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
