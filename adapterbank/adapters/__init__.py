"""Adapter kinds. Each module builds the PEFT config for training and applies a saved module at inference."""

from . import lora, prompt

KINDS = {"lora": lora, "prompt": prompt}


def kind_module(kind: str):
    from ..errors import AdapterBankError

    try:
        return KINDS[kind]
    except KeyError:
        raise AdapterBankError(f"unknown module kind {kind!r}; choose one of: {', '.join(KINDS)}") from None
