"""Adapter kinds. Each module builds the PEFT config for training and applies a saved module at inference.

Kind modules import PEFT, so they are loaded on first use: validating a kind name stays cheap.
"""

import contextlib
import importlib
import warnings

KINDS = ("lora", "prompt")


def check_kind(kind: str) -> str:
    from ..errors import AdapterBankError

    if kind not in KINDS:
        raise AdapterBankError(f"unknown module kind {kind!r}; choose one of: {', '.join(KINDS)}")
    return kind


def kind_module(kind: str):
    """The module (adapters.lora or adapters.prompt) implementing `kind`."""
    return importlib.import_module(f"{__name__}.{check_kind(kind)}")


@contextlib.contextmanager
def quiet_peft():
    """PEFT calls a transformers API that transformers has deprecated; keep that noise off users' screens."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield
