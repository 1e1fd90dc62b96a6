"""`learn`: a classification bank learns from a stream of labelled examples, answering at every moment.

Each chunk of lines is parsed, its examples' router features computed, and the pool written with the
stream position (one atomic write): from then on those examples answer through the router. Examples of
labels a module already covers move their class's router statistics (kept in the pool as sums and a
scatter, never in the task's files; README "Online learning"); the module itself is not retrained.
Examples of uncovered labels wait in the pool until they become a task through add-task:
- `blurry` boundaries (the default): when `min_labels` labels each have `min_per_label` examples, those
  labels become task `online-NNN`;
- `hard` boundaries: lines carry `"task": NAME`; when the name changes, the pending examples of the
  previous task become task NAME;
- either way, a pool that reaches `max_pending` graduates its best-filled labels at once, so its size
  (and memory) stays bounded whatever the stream's length.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..errors import DataError, IntegrityError
from ..store.pending import learn_lock
from .pool import load_pool, save_pool

BOUNDARIES = ("blurry", "hard")
ON_ERROR = ("stop", "skip")
DEFAULT_MIN_PER_LABEL = 32  # examples of a label before it can be part of a new module
DEFAULT_MIN_LABELS = 2  # ready labels that make a new module (blurry streams)
DEFAULT_MAX_PENDING = 4096  # examples the pool holds at most
CHUNK = 256  # lines per pool write; their lower pass runs in length-sorted batches (little padding)
IDLE_FLUSH = 1.0  # seconds a pipe may stay quiet before the lines read so far are taken in (tail -f)
IDLE = object()  # what the stdin reader yields when the pipe stayed quiet that long
ONLINE_PREFIX = "online-"


@dataclass
class LearnSummary:
    """What one `learn` call did."""

    lines: int = 0  # lines read from the stream (after those an earlier run consumed)
    examples: int = 0  # examples taken into the pool
    covered: int = 0  # examples of labels a module already covers (folded into their router statistics)
    skipped: list[str] = field(default_factory=list)  # "source:line: reason" of malformed lines skipped
    tasks: list[str] = field(default_factory=list)  # tasks added from the stream
    pending: int = 0  # examples still pending at the end
    pending_labels: int = 0
    resumed_after: int = 0  # lines of this file an earlier run had consumed
    seconds: float = 0.0
    ingest_seconds: float = 0.0  # without the training graduations ran

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def learn(bank, stream, *, boundaries: str = "blurry", on_error: str = "stop", min_per_label: int = DEFAULT_MIN_PER_LABEL,
          min_labels: int = DEFAULT_MIN_LABELS, max_pending: int = DEFAULT_MAX_PENDING, flush: bool = False,
          progress: bool = False, **add_task_settings) -> LearnSummary:
    """See the module docstring. `stream`: a path (resumable: lines an earlier run consumed are skipped),
    `-` for stdin, or an iterable of JSON lines or of {"text", "label"[, "task"]} dicts / (text, label) pairs."""
    from ..settings import check_number

    if boundaries not in BOUNDARIES:
        raise DataError(f"boundaries must be one of {', '.join(BOUNDARIES)}, got {boundaries!r}")
    if on_error not in ON_ERROR:
        raise DataError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    check_number("min_per_label", min_per_label, minimum=1, integer=True)
    check_number("min_labels", min_labels, minimum=1, integer=True)
    check_number("max_pending", max_pending, minimum=2, integer=True)
    bank._config(None, dict(add_task_settings))  # the modules' settings are checked now, not at the first graduation
    source, lines = _open(stream)
    with learn_lock(bank.path):
        return _learn(bank, source, lines, boundaries, on_error, min_per_label, min_labels, max_pending, flush, progress,
                      add_task_settings)


def _learn(bank, source, lines, boundaries, on_error, min_per_label, min_labels, max_pending, flush, progress,
           add_task_settings) -> LearnSummary:
    started = time.perf_counter()
    state = _Learner(bank, boundaries, min_per_label, min_labels, max_pending, progress, add_task_settings)
    summary = state.summary
    summary.resumed_after = skip = state.pool.sources.get(source, 0) if source.startswith("/") else 0
    chunk: list[tuple[int, dict]] = []
    number = 0
    for number, line in lines:
        if line is IDLE:  # a quiet pipe: answer with what came so far
            if chunk:
                state.ingest(chunk, source, chunk[-1][0])
                chunk = []
            continue
        if number <= skip:
            continue
        summary.lines += 1
        try:
            row = _parse(line, boundaries)
        except DataError as exc:
            where = f"{source}:{number}: {exc}"
            if on_error == "stop":
                state.ingest(chunk, source, number - 1)
                raise DataError(where + " (--on-error skip skips such lines)") from None
            summary.skipped.append(where)
            continue
        if row is not None:
            chunk.append((number, row))
        if len(chunk) >= CHUNK:
            state.ingest(chunk, source, number)
            chunk = []
    state.ingest(chunk, source, number)
    if flush:
        state.graduate_all()
    summary.pending, summary.pending_labels = len(state.pool.examples), len(state.pool.labels())
    summary.seconds = round(time.perf_counter() - started, 3)
    summary.ingest_seconds = round(summary.seconds - state.training_seconds, 3)
    return summary


def _open(stream) -> tuple[str, Iterator[tuple[int, object]]]:
    if isinstance(stream, (str, os.PathLike)) and str(stream) == "-":
        return "<stdin>", _pipe_lines(sys.stdin.buffer)
    if isinstance(stream, (str, os.PathLike)):
        path = Path(stream).expanduser()
        if not path.is_file():
            raise DataError(f"{path}: no such file")

        def read() -> Iterator[tuple[int, str]]:
            with open(path, encoding="utf-8", errors="strict") as handle:
                number = 0
                try:
                    for number, line in enumerate(handle, start=1):
                        yield number, line
                except UnicodeDecodeError:
                    raise DataError(f"{path}:{number + 1}: not UTF-8 text") from None
        return str(path.resolve()), read()
    return "<memory>", enumerate(stream, start=1)


def _pipe_lines(pipe) -> Iterator[tuple[int, object]]:
    """(number, line) from a pipe as lines arrive, and (number, IDLE) after IDLE_FLUSH quiet seconds, so a
    slow stream (`tail -f`) is taken in without waiting for a full chunk."""
    import select

    try:
        fd = pipe.fileno()
    except (AttributeError, OSError, ValueError):  # not a real pipe (a test's stdin): plain lines
        yield from enumerate((line.decode("utf-8", "replace") if isinstance(line, bytes) else line for line in pipe), start=1)
        return
    buffered, number = b"", 0
    while True:
        ready, _, _ = select.select([fd], [], [], IDLE_FLUSH)
        if not ready:
            yield number, IDLE
            continue
        data = os.read(fd, 1 << 16)
        if not data:
            break
        buffered += data
        *complete, buffered = buffered.split(b"\n")
        for raw in complete:
            number += 1
            yield number, _decoded(raw, number)
    if buffered:
        yield number + 1, _decoded(buffered, number + 1)


def _decoded(raw: bytes, number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"<stdin>:{number}: not UTF-8 text") from None


def _parse(line, boundaries: str) -> dict | None:
    """{"text", "label"[, "task"]} from one stream line (None for a blank line); DataError naming the field."""
    if isinstance(line, (tuple, list)) and len(line) == 2:
        line = {"text": line[0], "label": line[1]}
    if isinstance(line, str):
        if not line.strip():
            return None
        try:
            line = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"not valid JSON ({exc.msg})") from None
    if not isinstance(line, dict):
        raise DataError('expected an object {"text": ..., "label": ...}')
    text, label, task = line.get("text"), line.get("label"), line.get("task")
    if not isinstance(text, str) or not text.strip():
        raise DataError("field 'text': expected a non-empty string")
    if isinstance(label, (int, bool)) and not isinstance(label, bool):
        label = str(label)
    if not isinstance(label, str) or not label.strip():
        raise DataError("field 'label': expected a non-empty string")
    row = {"text": text, "label": label}
    if task is not None:
        from ..store.registry import validate_task_name

        if not isinstance(task, str):
            raise DataError("field 'task': expected a string")
        try:
            validate_task_name(task)
        except Exception as exc:  # noqa: BLE001 - the name's own message, as this line's error
            raise DataError(f"field 'task': {exc}") from None
        row["task"] = task
    elif boundaries == "hard":
        raise DataError("field 'task': required with hard boundaries (the task each line belongs to)")
    return row


class _Learner:
    def __init__(self, bank, boundaries, min_per_label, min_labels, max_pending, progress, settings):
        self.bank, self.boundaries = bank, boundaries
        self.min_per_label, self.min_labels, self.max_pending = min_per_label, min_labels, max_pending
        self.progress, self.settings = progress, settings
        self.dim = bank.registry.manifest["router"]["feature_dim"]
        self.summary = LearnSummary()
        self.training_seconds = 0.0
        self.pool = load_pool(bank.path)
        self.owners: dict[str, str] = {}  # covered label -> the (first) task whose module covers it
        for task in bank.tasks():
            for label in task.labels:
                self.owners.setdefault(label, task.name)
        self._task_stats: dict[str, dict] = {}
        graduating = self.pool.graduating
        if graduating is not None:  # a killed learn's graduation: finished if its task is in, else run again
            if bank.registry.has_task(graduating["task"]):
                self.pool.drop(set(graduating["ids"]))
                self.pool.graduating = None
                save_pool(bank.path, self.pool, self.dim)
            else:
                self._graduate(graduating["task"], set(graduating["ids"]))

    def ingest(self, chunk: list[tuple[int, dict]], source: str, position: int) -> None:
        """Take a chunk into the pool (pending examples, and covered ones as statistics), with the stream
        position, in one write; then graduate what is ready."""
        rows = [row for _, row in chunk]
        features = self.bank.router_features([row["text"] for row in rows]) if rows else None
        fresh = [i for i, row in enumerate(rows) if row["label"] not in self.owners]
        covered = [i for i, row in enumerate(rows) if row["label"] in self.owners]
        if fresh:
            self.pool.add([rows[i] for i in fresh], features[fresh])
            self.summary.examples += len(fresh)
        if covered:
            self.pool.absorb([rows[i] for i in covered], features[covered], self.owners.get, self._stats_of)
            self.summary.covered += len(covered)
        if source.startswith("/"):
            self.pool.sources[source] = position
        if rows or source.startswith("/"):
            save_pool(self.bank.path, self.pool, self.dim)
        self._graduate_ready()

    def _stats_of(self, task: str) -> dict:
        """A task's router statistics (class means and counts, in its label order), read once."""
        if task not in self._task_stats:
            from ..routing.statistics import load_statistics

            info = self.bank.task(task)
            stats = load_statistics(info.path)
            self._task_stats[task] = {"labels": info.labels, "means": stats["means"], "counts": stats["counts"]}
        return self._task_stats[task]

    def _graduate_ready(self) -> None:
        pool = self.pool
        if self.boundaries == "hard":
            tasks = [t for t in dict.fromkeys(e.get("task") for e in pool.examples) if t is not None]
            for name in tasks[:-1]:  # every task but the one still arriving is complete
                self._graduate(name, {e["id"] for e in pool.examples if e.get("task") == name})
        else:
            counts = pool.labels()
            ready = [label for label, n in counts.items() if n >= self.min_per_label]
            if len(ready) >= self.min_labels:
                self._graduate(self._name(), {e["id"] for e in pool.examples if e["label"] in set(ready)})
        while len(pool.examples) >= self.max_pending:  # full: the best-filled labels become a task now
            counts = pool.labels()
            best = sorted(counts, key=counts.get, reverse=True)[:max(self.min_labels, 1)]
            name = self._name() if self.boundaries == "blurry" else pool.examples[0].get("task") or self._name()
            self._graduate(name, {e["id"] for e in pool.examples if e["label"] in set(best)})

    def graduate_all(self) -> None:
        """--flush: whatever is pending becomes a task now (per task name with hard boundaries)."""
        if self.boundaries == "hard":
            for name in list(dict.fromkeys(e.get("task") for e in self.pool.examples)):
                self._graduate(name or self._name(), {e["id"] for e in self.pool.examples if e.get("task") == name})
        elif self.pool.examples:
            self._graduate(self._name(), {e["id"] for e in self.pool.examples})

    def _name(self) -> str:
        taken = set(self.bank.registry.task_names())
        number = 1 + sum(name.startswith(ONLINE_PREFIX) for name in taken)
        while f"{ONLINE_PREFIX}{number:03d}" in taken:
            number += 1
        return f"{ONLINE_PREFIX}{number:03d}"

    def _graduate(self, name: str, ids: set[int]) -> None:
        from .. import faults

        taken = set(self.bank.registry.task_names())
        base, suffix = name, 2
        while name in taken:  # a hard-boundary task named like an existing one: name-2, name-3, ...
            name, suffix = f"{base}-{suffix}", suffix + 1
        rows = self.pool.take(ids)
        self.pool.graduating = {"task": name, "ids": sorted(ids)}
        save_pool(self.bank.path, self.pool, self.dim)
        faults.point("graduation-recorded")
        started = time.perf_counter()
        self.bank.add_task(name, [(row["text"], row["label"]) for row in rows], progress=self.progress, **self.settings)
        self.training_seconds += time.perf_counter() - started
        faults.point("graduated-task-added")
        self.pool.drop(ids)
        self.pool.graduating = None
        save_pool(self.bank.path, self.pool, self.dim)
        for row in rows:
            self.owners.setdefault(row["label"], name)
        self.summary.tasks.append(name)


def purge(bank) -> int:
    """Drop the pending pool (its raw text with it); returns how many examples it held."""
    from ..store.pending import POOL_FILE

    try:
        count = len(load_pool(bank.path).examples)
    except IntegrityError:  # a damaged pool is purged all the same
        count = 0
    (bank.path / POOL_FILE).unlink(missing_ok=True)
    return count
