"""Starting the server: the bank opened and its model loaded first, the API key read, then uvicorn."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Callable

from ..errors import AdapterBankError
from ..settings import check_number
from .limits import MAX_KEY_FILE_BYTES

SWITCH_INTERVAL = 1e-4  # seconds (Python's default is 5e-3)


def read_api_key(path: str | os.PathLike) -> str:
    """The key in `path` (surrounding whitespace dropped): one line of printable characters."""
    path = Path(path)
    if not path.is_file():
        raise AdapterBankError(f"--api-key-file {path}: not a file")
    if path.stat().st_size > MAX_KEY_FILE_BYTES:
        raise AdapterBankError(f"--api-key-file {path}: over {MAX_KEY_FILE_BYTES} bytes; it should hold one key")
    try:
        key = path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise AdapterBankError(f"--api-key-file {path}: not UTF-8 text") from None
    if not key or any(c.isspace() or not c.isprintable() for c in key):
        raise AdapterBankError(f"--api-key-file {path}: expected one key of printable characters without spaces")
    return key


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def serve_bank(bank_path, host: str = "127.0.0.1", port: int = 8000, api_key_file=None, max_tokens: int | None = None,
               device: str = "auto", upstream: str | None = None, upstream_model: str | None = None,
               upstream_key_file=None, echo: Callable[[str], None] = print) -> None:
    """Open the bank (loading and checking its model now, not on the first request) and serve it until
    interrupted."""
    import sys

    import uvicorn

    from .. import AdapterBank
    from .app import ServeConfig, build_app
    from .limits import DEFAULT_TOKEN_LIMIT

    check_number("port", port, minimum=0, maximum=65535, integer=True)
    check_number("max_tokens", max_tokens if max_tokens is not None else DEFAULT_TOKEN_LIMIT, minimum=1, maximum=1 << 16, integer=True)
    key = read_api_key(api_key_file) if api_key_file is not None else None
    bank = AdapterBank.open(bank_path, device=device)
    bank.base  # noqa: B018 - load and verify the model before the first request
    port = port or free_port(host)
    if upstream is not None and not upstream.startswith(("http://", "https://")):
        raise AdapterBankError(f"--upstream {upstream!r}: expected an http:// or https:// URL")
    config = ServeConfig(api_key=key, max_tokens=max_tokens or DEFAULT_TOKEN_LIMIT, upstream=upstream,
                         upstream_key=read_api_key(upstream_key_file) if upstream_key_file is not None else None,
                         **({"upstream_model": upstream_model} if upstream_model else {}))
    app = build_app(bank, config)
    # The HTTP event loop shares the GIL with the model's worker thread; a short switch interval lets the
    # loop take in requests while a batch runs, so the next batch is fuller (CLINC150 load: 111 -> 138 req/s).
    sys.setswitchinterval(SWITCH_INTERVAL)
    echo(f"serving {bank.path} ({bank.title}, {len(bank.tasks())} tasks) on http://{host}:{port} "
         f"({'API key required' if key else 'no API key'}{f'; generating at {upstream}' if upstream else ''}); Ctrl-C stops")
    uvicorn.run(app, host=host, port=port, log_level="warning")
