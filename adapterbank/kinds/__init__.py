"""Adapter kinds: one module per kind, collected in the KINDS registry (see base.py for what a kind declares)."""

from . import lora, prompt, ia3  # noqa: F401  (each registers its kind, in this order)
from .base import (DEFAULT_KIND, KINDS, Kind, build_config, get_kind, merged_model, quiet_peft, resolve_params, save_module,
                   write_peft_dir)

__all__ = ["DEFAULT_KIND", "KINDS", "Kind", "build_config", "get_kind", "merged_model", "quiet_peft", "resolve_params",
           "save_module", "write_peft_dir"]
