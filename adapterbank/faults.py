"""Named points where crash tests kill the process, to prove no moment of a write can corrupt a bank.

Set `ADAPTERBANK_KILL_AT=<point>` and the process SIGKILLs itself on reaching that point (no cleanup,
no atexit: the same as a power cut for everything not yet renamed into place). Unset, a point costs
one dictionary lookup. Points: `lower-pass`, `train-step-<n>`, `trained`, `saved-module`, `saved-head`,
`saved-router`, `hashed`, `locked`, `manifest-written`, `renamed`, `index-written`, `index-replaced`;
merge: `merged-in-memory`, `base-saved`, `base-renamed`, `version-listed`.
"""

from __future__ import annotations

import os
import signal


def point(name: str) -> None:
    if os.environ.get("ADAPTERBANK_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
