"""Adapter kinds. Each module builds the PEFT config for training and applies a saved module at inference."""

import contextlib
import warnings

from . import lora, prompt

KINDS = {"lora": lora, "prompt": prompt}


def kind_module(kind: str):
    from ..errors import AdapterBankError

    try:
        return KINDS[kind]
    except KeyError:
        raise AdapterBankError(f"unknown module kind {kind!r}; choose one of: {', '.join(KINDS)}") from None


@contextlib.contextmanager
def quiet_peft():
    """PEFT calls a transformers API that transformers has deprecated; keep that noise off users' screens."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield
