"""The pending pool's file (online learning, online/pool.py): `pending.safetensors` at the bank root.

One file, replaced atomically: the pending examples' router features as an fp16 tensor, and in its
metadata the pool's JSON and a sha256 over both, checked on every read and by `verify`. numpy only, so
the store stays free of torch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .. import faults
from ..errors import IntegrityError
from .files import write_atomic

POOL_FILE = "pending.safetensors"
PURGE_HINT = "`adapterbank learn BANK --purge` drops it"


def _digest(meta: str, features) -> str:
    digest = hashlib.sha256(meta.encode("utf-8"))
    digest.update(features.tobytes())
    return digest.hexdigest()


def save_pending(root: Path, body: dict, features) -> None:
    """Atomically replace the pool file with `body` (JSON-able) and `features` (numpy fp16 [n, D])."""
    from safetensors.numpy import save_file

    meta = json.dumps(body, ensure_ascii=False)
    features = features.astype("float16", copy=False)

    def write(tmp: Path) -> None:
        save_file({"features": features}, str(tmp), metadata={"pool": meta, "sha256": _digest(meta, features)})
        faults.point("pool-written")

    write_atomic(Path(root) / POOL_FILE, write)


def load_pending(root: Path) -> tuple[dict, object] | None:
    """(body, features) of the pool file, None without one; IntegrityError when it is edited or damaged."""
    from safetensors import safe_open

    path = Path(root) / POOL_FILE
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="numpy") as handle:
            meta = handle.metadata() or {}
            features = handle.get_tensor("features")
        body = json.loads(meta["pool"])
    except Exception as exc:  # noqa: BLE001 - any unreadable pool is one error naming the file
        raise IntegrityError(f"{path}: unreadable pending pool ({type(exc).__name__}); {PURGE_HINT}") from None
    if meta.get("sha256") != _digest(meta["pool"], features):
        raise IntegrityError(f"{path}: checksum mismatch: the pending pool was edited or damaged; {PURGE_HINT}")
    return body, features


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
