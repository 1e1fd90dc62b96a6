"""CLI choices and options generated from the library's registries and settings dataclasses, so the
command line and the Python API cannot drift: a new adapter kind, router method, merge method,
baseline or setting appears in `--help` without touching the CLI."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from enum import Enum
from typing import Any, Callable, Iterable, Optional

import typer


def choices(name: str, names: Iterable[str]) -> type[Enum]:
    """A str Enum of `names` (typer shows them as the option's choices)."""
    return Enum(name, {n: n for n in names}, type=str)  # type: ignore[return-value]


def listing(entries: dict[str, Any]) -> str:
    """`name: summary; name: summary` for an option's help."""
    return "; ".join(f"{name}: {entry.summary}" for name, entry in entries.items())


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def setting_options(sources: Iterable[tuple[str, type]], skip: tuple[str, ...] = ()) -> Callable:
    """Add one option per field of the settings dataclasses in `sources` ((label, dataclass) pairs) to the
    decorated command; the command receives the values given (not None) as `settings: dict`.

    A field several sources share becomes one option; its shown default lists each source's own."""
    fields: dict[str, list[tuple[str, dataclasses.Field, Any]]] = {}
    for label, cls in sources:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in skip and "help" in f.metadata:
                fields.setdefault(f.name, []).append((label, f, hints[f.name]))

    def decorate(command: Callable) -> Callable:
        extra = []
        for name, entries in fields.items():
            _, first, hint = entries[0]
            value_type = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
            defaults = {str(f.default) for _, f, _ in entries}
            shown = (str(first.default) if len(defaults) == 1 else
                     "; ".join(f"{label} {'auto' if f.default is None else f.default}" for label, f, _ in entries))
            help_text = first.metadata["help"] + ("" if len(entries) > 1 or not entries[0][0] else f" ({entries[0][0]})")
            help_text += "".join(f" {label}: {f.metadata['help']}" for label, f, _ in entries[1:]
                                 if f.metadata["help"] != first.metadata["help"])
            option = typer.Option(None, _flag(name), help=help_text, show_default=shown if shown != "None" else False,
                                  metavar=first.metadata.get("metavar"))
            extra.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                           annotation=Optional[value_type]))
        signature = inspect.signature(command)

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given = {name: kwargs.pop(name) for name in fields}
            return command(*args, settings={k: v for k, v in given.items() if v is not None}, **kwargs)

        kept = [p for p in signature.parameters.values() if p.name != "settings"]
        wrapper.__signature__ = signature.replace(parameters=kept + extra)  # type: ignore[attr-defined]
        return wrapper

    return decorate
