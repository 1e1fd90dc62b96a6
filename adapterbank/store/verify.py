"""`verify`: every file of a bank checked against what its manifests record, without loading a model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BankError
from .files import TEMP_PREFIX, is_leftover, read_sealed, writer_alive
from .pending import LEARN_LOCK, POOL_FILE, pending_problem
from .registry import INDEX_FILE, LOCK, MANIFEST, TASKS, Registry
from .versions import BASES, unlisted_versions, verify_versions

_ROOT_ENTRIES = {MANIFEST, TASKS, BASES, LOCK, INDEX_FILE, POOL_FILE, LEARN_LOCK}


@dataclass
class VerifyReport:
    """`problems`: files that do not match what the bank records, or do not belong to it. `notes`:
    leftovers of writers that were interrupted (harmless: never read, removed by the next write)."""

    path: Path
    tasks: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_bank(path: str | Path) -> VerifyReport:
    """Check a whole bank: bank.json and every task.json against their checksums, every task and base
    version file against its recorded sha256, the pending pool against its own, and nothing at the bank root, in tasks/ or bases/ that
    the bank does not list (stray files, leftovers of writers that died). Only reads."""
    registry = Registry.open(path, check_manifest=False)  # a failing bank.json is reported, not fatal
    report = VerifyReport(registry.root)
    try:
        read_sealed(registry.root / MANIFEST)
    except BankError as exc:
        report.problems.append(str(exc))
    report.tasks, problems = registry.verify_tasks()
    report.problems += problems + verify_versions(registry)
    pool = pending_problem(registry.root)
    if pool is not None:
        report.problems.append(pool)
    for entry in sorted(registry.root.iterdir()):
        if entry.name not in _ROOT_ENTRIES and not is_leftover(entry):
            report.problems.append(f"{entry}: not part of the bank")
    for folder in (registry.root, registry.root / TASKS, registry.root / BASES):
        if folder.is_dir():
            report.notes += [f"{entry}: left by a writer that did not finish (never read; the next write removes it)"
                             for entry in sorted(folder.iterdir())
                             if is_leftover(entry) and not (entry.name.startswith(TEMP_PREFIX) and writer_alive(entry))]
    report.notes += unlisted_versions(registry)
    return report

