"""Settings as data: dataclass fields that carry their help text and their valid range.

Training configurations, adapter kinds' hyper-parameters and merge parameters are dataclasses whose
fields are declared with `setting(...)`. The declaration is the single place a default, its help
and its bounds live: `check` validates an instance (finite numbers within bounds, for the Python API
and the CLI alike) and the CLI reads help and defaults from the same fields.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .errors import AdapterBankError


# Upper bounds that keep a typo from running for days or exhausting memory (the harness in
# tests/cli/test_hostile_options.py tries "huge" values on every option).
MAX_SEED = 2**32 - 1
MAX_EPOCHS = 1000
MAX_STEPS = 10_000_000
MAX_BATCH = 65_536
MAX_LR = 10.0
MAX_TOKENS = 1 << 16


def seed_setting(help: str = "Random seed (same seed, same module).") -> Any:  # noqa: A002
    return setting(0, help, minimum=0, maximum=MAX_SEED, integer=True)


def setting(default: Any, help: str, *, above: float | None = None, minimum: float | None = None,  # noqa: A002
            maximum: float | None = None, integer: bool = False, metavar: str | None = None) -> Any:
    """A dataclass field with its help and bounds: `above` (exclusive), `minimum`/`maximum` (inclusive).
    None as a value always passes: it means "the default, resolved later". `metavar`: how `--help` names
    the value, where its type alone would mislead (a number or a word)."""
    return dataclasses.field(default=default, metadata={"help": help, "above": above, "minimum": minimum,
                                                        "maximum": maximum, "integer": integer, "metavar": metavar})


def check(instance: Any) -> Any:
    """Raise AdapterBankError naming the first field whose value is not a finite number within its bounds."""
    for f in dataclasses.fields(instance):
        meta, value = f.metadata, getattr(instance, f.name)
        if value is None or not any(meta.get(key) is not None for key in ("above", "minimum", "maximum")):
            continue
        check_number(f.name, value, above=meta["above"], minimum=meta["minimum"], maximum=meta["maximum"],
                     integer=meta["integer"])
    return instance


def check_number(name: str, value: Any, *, above: float | None = None, minimum: float | None = None,
                 maximum: float | None = None, integer: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise AdapterBankError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not math.isfinite(value):
        raise AdapterBankError(f"{name} must be a finite number, got {value}")
    if above == 0 and value <= 0:
        raise AdapterBankError(f"{name} must be positive, got {value}")
    if above is not None and value <= above:
        raise AdapterBankError(f"{name} must be greater than {above}, got {value}")
    if minimum is not None and value < minimum:
        raise AdapterBankError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise AdapterBankError(f"{name} must be at most {maximum}, got {value}")
