"""The one way adapterbank writes: atomic files, staged directories, checksums and sealed JSON.

- A file is written to a temp file beside it, fsynced and renamed over it: readers see the old file
  or the new one, never part of one.
- A directory (a task, a base version, a new bank, an export) is filled under a temp name beside its
  target and renamed into place when complete.
- Temp files and directories alike are named `.tmp-<label>-<pid>-<random>`: a writer that dies leaves
  only such a name, which `sweep` removes once its process is gone.
- Manifests (`bank.json`, `task.json`) carry a `checksum` of their own content (`seal`), so an edit or
  a flipped bit is noticed whenever they are read.

Standard library only: listing, showing or verifying a bank never imports torch.
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

from safetensors import SafetensorError

from ..errors import BankError, IntegrityError, StorageError

TEMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
# What a failed write raises: the OS's errors, and safetensors' (its writer is Rust: a full disk comes back
# as SafetensorError, not OSError). The tokenizers library raises a bare Exception ending in "(os error N)".
WRITE_ERRORS = (OSError, SafetensorError)
_RUST_IO_ERROR = re.compile(r"\(os error \d+\)")


def is_write_error(exc: BaseException) -> bool:
    """Whether `exc` is the file system refusing a write (disk full, read-only, ...), whichever library raised it."""
    return isinstance(exc, WRITE_ERRORS) or (type(exc) is Exception and bool(_RUST_IO_ERROR.search(str(exc))))


# -- errors -----------------------------------------------------------------------------------------
def describe_write_error(exc: BaseException, where: str | Path) -> str:
    """One line: what the file system said, and where. `where` names the operation's target when the
    error does not carry a file name (safetensors' errors do not)."""
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc) or type(exc).__name__
        return f"{exc.filename or where}: {reason}"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{where}: {text}"


@contextlib.contextmanager
def storage_errors(where: str | Path, action: str = "cannot write") -> Iterator[None]:
    """Turn a file-system failure inside the block into StorageError (one line naming the path)."""
    try:
        yield
    except Exception as exc:
        if not is_write_error(exc):
            raise
        raise StorageError(f"{action} {describe_write_error(exc, where)}") from None


def make_readable(directory: Path) -> None:
    """Files written through temp files (safetensors, tempfile) can come out 0600: give every file in
    `directory` the mode a plain `open()` would (0666 less the umask), like the JSON beside them."""
    mask = _umask()
    for entry in Path(directory).iterdir():
        if entry.is_file():
            os.chmod(entry, 0o666 & ~mask)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- atomic files ---------------------------------------------------------------------------------
def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Let `write` fill a temp file beside `path`, then rename it over `path`. The temp file is
    removed if `write` fails."""
    path = Path(path)
    tmp = path.with_name(_temp_name(path.name))
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # as readable as a plain open() makes it, whoever wrote the temp file
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_json_atomic(path: Path, payload: dict) -> None:
    """JSON written atomically, fsynced before the rename."""
    try:  # NaN and Infinity are not JSON: refuse them before anything is written
        text = json.dumps(payload, indent=2, ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise IntegrityError(f"{path}: refusing to write a value that is not a finite number (NaN or Infinity)") from None

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())

    write_atomic(path, write)


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- staged directories ---------------------------------------------------------------------------
def ensure_new_dir(path: str | Path, what: str = "path") -> Path:
    """`path` may not exist yet, or be an empty directory; anything else is refused (nothing is overwritten)."""
    path = Path(path).expanduser()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise BankError(f"{path}: already exists and is not an empty directory; choose a new {what}")
    return path


@contextlib.contextmanager
def staging_dir(parent: Path, label: str) -> Iterator[Path]:
    """A new, empty, private directory in `parent`, removed on exit unless the caller renamed it away
    (`publish_dir`). Its name says which process owns it, so `sweep` can tell a dead writer's leftovers."""
    parent = Path(parent)
    if not parent.is_dir():  # never re-created here: a bank moved away must not grow back at its old path
        raise BankError(f"{parent}: directory not found (was the bank moved or deleted?)")
    staging = parent / _temp_name(label)
    staging.mkdir()
    try:
        yield staging
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _temp_name(label: str) -> str:
    return f"{TEMP_PREFIX}{label}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def publish_dir(staging: Path, target: Path) -> Path:
    """Rename a complete staging directory to `target` (absent, or an empty directory) and fsync the parent."""
    target = ensure_new_dir(target)
    make_readable(staging)
    if target.exists():
        target.rmdir()
    os.rename(staging, target)
    fsync_dir(target.parent)
    return target


def write_new_dir(target: str | Path, fill: Callable[[Path], object], what: str = "path") -> Path:
    """Create directory `target` with the files `fill(staging)` writes, atomically: a failure or a kill
    leaves nothing at `target`. `target` must not exist, or be an empty directory."""
    target = ensure_new_dir(target, what)
    with storage_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep(target.parent, label=target.name)
        with staging_dir(target.parent, target.name) as staging:
            fill(staging)
            return publish_dir(staging, target)


def move_to_trash(path: Path) -> Path:
    """Rename `path` out of sight (atomic) before deleting it; `sweep` finishes what a killed delete left."""
    trash = path.with_name(f"{TRASH_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    os.rename(path, trash)
    fsync_dir(path.parent)
    return trash


def is_leftover(entry: Path) -> bool:
    """A temp or trash entry of this module's making."""
    return entry.name.startswith((TEMP_PREFIX, TRASH_PREFIX))


def sweep(parent: Path, label: str | None = None) -> None:
    """Remove trash, and temp files and directories whose writer process is gone (of `label` only, if given)."""
    if not Path(parent).is_dir():
        return
    for entry in Path(parent).iterdir():
        if entry.name.startswith(TRASH_PREFIX) and label is None:
            _remove(entry)
        elif entry.name.startswith(TEMP_PREFIX):
            parts = entry.name[len(TEMP_PREFIX):].rsplit("-", 2)
            if len(parts) == 3 and label is not None and parts[0] != label:
                continue
            if not writer_alive(entry):
                _remove(entry)


def writer_alive(entry: Path) -> bool:
    """Whether the process that owns a temp entry (its name holds the pid) still runs."""
    pid = entry.name.rsplit("-", 2)[-2] if entry.name.count("-") >= 2 else ""
    return pid.isdigit() and pid_alive(int(pid))


def _remove(entry: Path) -> None:
    if entry.is_dir():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- checksums and sealed manifests ---------------------------------------------------------------
def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_files(directory: Path) -> dict[str, str]:
    """{file name: sha256} of every file directly in `directory`, sorted by name."""
    return {p.name: sha256_file(p) for p in sorted(Path(directory).iterdir()) if p.is_file()}


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


def read_sealed(path: Path) -> dict:
    return check_sealed(path, read_json(path))


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
