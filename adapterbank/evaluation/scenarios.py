"""Turning a data directory into the ordered tasks of a continual-learning run, checked before any training.

Two layouts:
- flat: DATA_DIR/train.jsonl and DATA_DIR/test.jsonl; the labels are dealt into tasks of disjoint labels
  (a seeded shuffle into `n_tasks`, or a JSON task map `{"task": [labels...]}` such as CLINC150's domains.json);
- folders: one sub-folder per task (or per domain), each with its own train/test files, taken in
  `order` (default: alphabetical). A label string found in two folders is one label.

Scenarios: `class` (tasks of new labels, predicted without the task id), `task` (the same tasks, the task
id given at test time) and `domain` (the same labels in one folder per domain, predicted without it).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..data import SUPPORTED_SUFFIXES, Dataset, check_label_count, load_dataset
from ..errors import DataError, InvalidNameError
from ..store.registry import validate_task_name

SCENARIOS = ("class", "task", "domain")
DEFAULT_TASKS = 5


@dataclass
class TaskData:
    name: str
    labels: list[str]
    train: Dataset
    test: Dataset


def load_scenario(data_dir: str | Path, scenario: str = "class", n_tasks: int | None = None,
                  task_map: str | Path | None = None, order: Sequence[str] | None = None, seed: int = 0,
                  max_train_per_class: int | None = None) -> list[TaskData]:
    """The tasks of a run, in order; raises DataError naming the file or task at fault."""
    if scenario not in SCENARIOS:
        raise DataError(f"unknown scenario {scenario!r}; choose one of: {', '.join(SCENARIOS)}")
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    if max_train_per_class is not None and max_train_per_class < 1:
        raise DataError(f"max_train_per_class must be at least 1, got {max_train_per_class}")
    if n_tasks is not None and task_map is not None:
        raise DataError("give either a number of tasks or a task map, not both")
    flat = _split_file(root, "train") is not None
    if flat:
        if scenario == "domain":
            raise DataError(f"{root}: the domain scenario needs one sub-folder per domain, found a flat train file")
        if order:
            raise DataError("--order names sub-folders; this data directory is flat (use a task map to order tasks)")
        tasks = _flat_tasks(root, n_tasks, task_map, seed)
    else:
        if n_tasks is not None or task_map is not None:
            raise DataError(f"{root}: the sub-folders define the tasks; drop the task count / task map")
        tasks = _folder_tasks(root, order, scenario)
    for task in tasks:  # every task becomes a bank task: a bad name must fail before any training
        check_label_count(task.train)
        try:
            validate_task_name(task.name)
        except InvalidNameError as exc:
            raise DataError(f"{root}: task {task.name!r} cannot name a bank task ({exc})") from None
    if max_train_per_class is not None:
        for task in tasks:
            task.train = _cap_per_class(task.train, max_train_per_class, seed)
    return tasks


def _split_file(directory: Path, split: str) -> Path | None:
    for suffix in SUPPORTED_SUFFIXES:
        path = directory / f"{split}{suffix}"
        if path.is_file():
            return path
    return None


def _load_split(directory: Path, split: str) -> Dataset:
    path = _split_file(directory, split)
    if path is None:
        raise DataError(f"{directory}: missing {split} split ({split}.jsonl or {split}.csv)")
    return load_dataset(path)


def _check_test_labels(train: Dataset, test: Dataset) -> None:
    known = set(train.labels)
    for row, label in enumerate(test.targets, start=1):
        if label not in known:
            raise DataError(f"{test.source}: label {label!r} (row {row}) never appears in {Path(train.source).name}")


def _subset(data: Dataset, labels: set[str], source: str) -> Dataset:
    pairs = [(t, y) for t, y in zip(data.texts, data.targets) if y in labels]
    return Dataset([t for t, _ in pairs], [y for _, y in pairs], source=source)


def _flat_tasks(root: Path, n_tasks: int | None, task_map: str | Path | None, seed: int) -> list[TaskData]:
    train, test = _load_split(root, "train"), _load_split(root, "test")
    _check_test_labels(train, test)
    labels = train.labels
    if task_map is not None:
        groups = _read_task_map(Path(task_map), set(labels))
    else:
        count = DEFAULT_TASKS if n_tasks is None else n_tasks
        if count < 1:
            raise DataError(f"the number of tasks must be at least 1, got {count}")
        if count > len(labels):
            raise DataError(f"{train.source}: {count} tasks asked for but the data has only {len(labels)} labels")
        shuffled = sorted(labels)
        random.Random(seed).shuffle(shuffled)
        size, extra = divmod(len(shuffled), count)
        groups, start = {}, 0
        for i in range(count):
            end = start + size + (1 if i < extra else 0)
            groups[f"task{i:02d}"] = shuffled[start:end]
            start = end
    tasks = []
    for name, group in groups.items():
        chosen = set(group)
        task_test = _subset(test, chosen, f"{test.source} [{name}]")
        if len(task_test) == 0:
            raise DataError(f"task {name!r}: none of its labels has a test text in {test.source}")
        tasks.append(TaskData(name, list(group), _subset(train, chosen, f"{train.source} [{name}]"), task_test))
    return tasks


def _read_task_map(path: Path, known: set[str]) -> dict[str, list[str]]:
    try:
        groups = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: task map not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: task map is not valid JSON ({exc})") from None
    if not isinstance(groups, dict) or not groups:
        raise DataError(f'{path}: a task map is a JSON object {{"task name": ["label", ...]}} with at least one task')
    owner: dict[str, str] = {}
    for name, group in groups.items():
        if not isinstance(group, list) or not all(isinstance(label, str) for label in group):
            raise DataError(f"{path}: task {name!r}: expected a list of label strings")
        if not group:
            raise DataError(f"{path}: task {name!r} is empty")
        for label in group:
            if label not in known:
                raise DataError(f"{path}: task {name!r}: label {label!r} is not in the training data")
            if label in owner:
                raise DataError(f"{path}: label {label!r} is in both task {owner[label]!r} and task {name!r}")
            owner[label] = name
    missing = sorted(known - set(owner))
    if missing:
        raise DataError(f"{path}: {len(missing)} training labels are in no task, e.g. {', '.join(map(repr, missing[:3]))}")
    return groups


def _folder_tasks(root: Path, order: Sequence[str] | None, scenario: str) -> list[TaskData]:
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root}: no train file and no task sub-folders")
    if order:
        unknown = [name for name in order if name not in folders]
        if unknown:
            raise DataError(f"--order: no sub-folder {unknown[0]!r} in {root} (found: {', '.join(folders)})")
        if len(set(order)) != len(order):
            raise DataError("--order names a sub-folder twice")
        folders = list(order)
    tasks = []
    for name in folders:
        train, test = _load_split(root / name, "train"), _load_split(root / name, "test")
        _check_test_labels(train, test)
        tasks.append(TaskData(name, train.labels, train, test))
    if scenario == "domain":
        first = set(tasks[0].labels)
        for task in tasks[1:]:
            if not set(task.labels) & first:
                raise DataError(f"domain {task.name!r} shares no label with domain {tasks[0].name!r}: "
                                "the domain scenario is the same labels in new domains")
    return tasks


def _cap_per_class(data: Dataset, cap: int, seed: int) -> Dataset:
    """At most `cap` training texts per label, drawn by a seeded shuffle, file order kept."""
    rows = list(range(len(data)))
    random.Random(seed).shuffle(rows)
    seen: dict[str, int] = {}
    kept = []
    for row in rows:
        label = data.targets[row]
        if seen.get(label, 0) < cap:
            seen[label] = seen.get(label, 0) + 1
            kept.append(row)
    kept.sort()
    return Dataset([data.texts[i] for i in kept], [data.targets[i] for i in kept], source=data.source)
