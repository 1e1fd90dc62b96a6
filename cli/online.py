"""`adapterbank learn`: a classification bank learns from a stream of labelled examples (adapterbank/online/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from adapterbank.classify.config import ClassificationConfig
from adapterbank.kinds import KINDS
from adapterbank.online.learner import (BOUNDARIES, DEFAULT_MAX_PENDING, DEFAULT_MIN_LABELS, DEFAULT_MIN_PER_LABEL,
                                        ON_ERROR)

from .common import BankArg, DeviceOpt, Kind, KindOpt, app, fail, open_bank
from .generated import setting_options

# the settings of the modules learn trains: add-task's for classification, and each classification kind's
LEARN_SETTINGS = [("", ClassificationConfig), *((f"--kind {name}", kind.Params) for name, kind in KINDS.items()
                                                if "classifier" in kind.families)]


@app.command()
@setting_options(LEARN_SETTINGS, skip=("kind", "params"))
def learn(
    bank: Path = BankArg,
    stream: Optional[str] = typer.Option(None, "--stream", help="JSON Lines of {\"text\", \"label\"} (and \"task\" with --boundaries hard), or '-' for stdin (e.g. `tail -f labelled.jsonl | adapterbank learn BANK --stream -`). A file is resumable: lines an earlier run consumed are skipped."),
    boundaries: str = typer.Option("blurry", "--boundaries", help=f"{' | '.join(BOUNDARIES)}. blurry: labels become a module once --min-labels of them have --min-per-label examples each; hard: each line names its task, and a new name closes the previous task into a module."),
    on_error: str = typer.Option("stop", "--on-error", help=f"{' | '.join(ON_ERROR)}: what a malformed line does (its line number is reported either way; nothing of it is applied)."),
    min_per_label: int = typer.Option(DEFAULT_MIN_PER_LABEL, "--min-per-label", help="Examples of a label before it can become part of a module."),
    min_labels: int = typer.Option(DEFAULT_MIN_LABELS, "--min-labels", help="Ready labels that make a new module (blurry)."),
    max_pending: int = typer.Option(DEFAULT_MAX_PENDING, "--max-pending", help="Examples the pending pool holds at most; when full, its best-filled labels become a module."),
    flush: bool = typer.Option(False, "--flush", help="At the end, turn whatever is pending into a module (per task with hard boundaries)."),
    purge: bool = typer.Option(False, "--purge", help="Drop the pending pool and the raw text it holds (nothing else changes)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    kind: Kind = KindOpt,
    device: str = DeviceOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    settings: Optional[dict] = None,
) -> None:
    """Learn from a stream of labelled examples, answering at every moment. A label is predicted as soon as
    its first examples are in (through the router, from the pending pool kept in the bank); once enough
    examples gathered, labels become a module through add-task. Earlier modules are never retrained;
    examples of labels a module covers are counted and left alone."""
    opened = open_bank(bank, device)
    if purge:
        if stream is not None:
            fail("--purge drops the pending pool; run it without --stream")
        typer.echo(f"purged the pending pool ({opened.purge_pending()} examples)")
        return
    if stream is None:
        fail("--stream FILE (or '-' for stdin) is required")
    if boundaries not in BOUNDARIES or on_error not in ON_ERROR:
        fail(f"--boundaries: one of {', '.join(BOUNDARIES)}; --on-error: one of {', '.join(ON_ERROR)}")
    summary = opened.learn(stream, boundaries=boundaries, on_error=on_error, min_per_label=min_per_label,
                           min_labels=min_labels, max_pending=max_pending, flush=flush, progress=not quiet,
                           kind=kind.value, **(settings or {}))
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
        return
    for skipped in summary.skipped:
        typer.echo(f"skipped {skipped}", err=True)
    typer.echo(f"read {summary.lines} lines ({summary.resumed_after} consumed earlier): {summary.examples} pending examples taken, "
               f"{summary.covered} of covered labels, {len(summary.skipped)} skipped; new tasks: "
               f"{', '.join(summary.tasks) or 'none'}; pending now: {summary.pending} examples of {summary.pending_labels} labels "
               f"({summary.ingest_seconds:.1f} s ingest, {summary.seconds:.1f} s in all)")
