"""What every command module shares: the typer app, the choices generated from the registries, the
common arguments, and the two helpers (fail in one line, open a bank without loading its model)."""

from __future__ import annotations

from pathlib import Path

import typer

from adapterbank import AdapterBank
from adapterbank.causal.merging import MERGE_METHODS
from adapterbank.classify.bank import COMPOSITIONS
from adapterbank.evaluation.protocols import PROTOCOLS
from adapterbank.kinds import DEFAULT_KIND, KINDS
from adapterbank.routing.methods import METHODS

from .generated import choices, listing

app = typer.Typer(
    help="Parameter-efficient continual learning: one frozen base model, one small module per task, "
    "and task-agnostic predictions over every label learned so far.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rich's tables show a `<bool>` metavar on flags that take no value
)

Kind = choices("Kind", KINDS)
OBJECTIVES = {name: config for family in AdapterBank.families().values() for name, config in family.objectives.items()}
Objective = choices("Objective", OBJECTIVES)
MergeMethod = choices("MergeMethod", MERGE_METHODS)
RouterMethod = choices("RouterMethod", METHODS)
Composition = choices("Composition", COMPOSITIONS)
Scenario = choices("Scenario", PROTOCOLS)

BankArg = typer.Argument(..., help="Bank directory.", show_default=False)
DeviceOpt = typer.Option("auto", "--device", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:N.")
KindOpt = typer.Option(DEFAULT_KIND, "--kind", help=f"Module kind: {listing(KINDS)}.")
TRAINING_SETTINGS = [*OBJECTIVES.items(), *((f"--kind {name}", kind.Params) for name, kind in KINDS.items())]


def fail(message: str) -> None:
    """An argument error the library cannot see (two options that exclude each other): one line, exit 1."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


def open_bank(bank: Path, device: str = "auto") -> AdapterBank:
    """Open without loading the model: commands that need it load and verify it on first use,
    after their inputs have been validated (so bad input fails in well under a second)."""
    return AdapterBank.open(bank, device=device, lazy=True)
