"""The pending pool's file (online learning, online/pool.py): `pending.safetensors` at the bank root.

One file, replaced atomically: the pool's arrays (the pending examples' router features, the stream's
statistics of covered labels), and in its metadata the pool's JSON and a sha256 over all of it, checked on
every read and by `verify`. numpy only, so the store stays free of torch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .. import faults
from ..errors import IntegrityError
from .files import write_atomic

POOL_FILE = "pending.safetensors"
LEARN_LOCK = ".learn.lock"  # held by the one `learn` that may write the pool at a time
PURGE_HINT = "`adapterbank learn BANK --purge` drops it"


def _digest(meta: str, arrays: dict) -> str:
    digest = hashlib.sha256(meta.encode("utf-8"))
    for name in sorted(arrays):
        digest.update(name.encode("utf-8"))
        digest.update(arrays[name].tobytes())
    return digest.hexdigest()


def save_pending(root: Path, body: dict, arrays: dict) -> None:
    """Atomically replace the pool file with `body` (JSON-able) and `arrays` (name -> numpy array)."""
    from safetensors.numpy import save_file

    meta = json.dumps(body, ensure_ascii=False)

    def write(tmp: Path) -> None:
        save_file(arrays, str(tmp), metadata={"pool": meta, "sha256": _digest(meta, arrays)})
        faults.point("pool-written")

    write_atomic(Path(root) / POOL_FILE, write)


def load_pending(root: Path) -> tuple[dict, dict] | None:
    """(body, arrays) of the pool file, None without one; IntegrityError when it is edited or damaged."""
    from safetensors import safe_open

    path = Path(root) / POOL_FILE
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="numpy") as handle:
            meta = handle.metadata() or {}
            arrays = {name: handle.get_tensor(name) for name in handle.keys()}
        body = json.loads(meta["pool"])
    except Exception as exc:  # noqa: BLE001 - any unreadable pool is one error naming the file
        raise IntegrityError(f"{path}: unreadable pending pool ({type(exc).__name__}); {PURGE_HINT}") from None
    if meta.get("sha256") != _digest(meta["pool"], arrays):
        raise IntegrityError(f"{path}: checksum mismatch: the pending pool was edited or damaged; {PURGE_HINT}")
    return body, arrays


def pending_problem(root: Path) -> str | None:
    """For `verify`: what is wrong with the pool file, or None (also when there is none)."""
    try:
        load_pending(root)
    except IntegrityError as exc:
        return str(exc)
    return None


def pool_stamp(root: Path) -> tuple[int, int] | None:
    """(mtime_ns, size) of the pool file, to notice another writer's change cheaply; None without one."""
    try:
        stat = (Path(root) / POOL_FILE).stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


def learn_lock(root: Path):
    """A lock only one `learn` on the bank holds: a second one fails at once, naming the reason."""
    import contextlib

    from filelock import FileLock, Timeout

    from ..errors import BankError

    @contextlib.contextmanager
    def held():
        lock = FileLock(str(Path(root) / LEARN_LOCK), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise BankError(f"{root}: another `learn` is writing this bank's pending pool; one at a time") from None
        try:
            yield
        finally:
            lock.release()

    return held()
