"""The continual-learning protocol: add tasks one at a time to a fresh bank, measure after each.

After learning task i, every test text of tasks 0..i (and of task i+1, for forward transfer) is
predicted through `AdapterBank.predict` without the task id (class and domain scenarios) or with it
(task scenario), every text answered (no out-of-scope rejection: the label sets are closed here).
R[i][j] is the accuracy on task j. The oracle (task id given) and the routing accuracy are measured
after the last task. Baselines (baselines.py, a registry) run on the same base, data, training budget
and module kind.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Sequence

from ..bank import AdapterBank
from ..core.models import DEFAULT_BASE
from ..errors import AdapterBankError
from ..kinds import DEFAULT_KIND
from . import metrics
from .scenarios import TaskData


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _accuracy(predictions, gold: Sequence[str]) -> float:
    return sum(p.label == g for p, g in zip(predictions, gold)) / len(gold)


def _predict_tasks(bank: AdapterBank, tasks: Sequence[TaskData], which: Sequence[int], task_given: bool,
                   learned: int) -> dict[int, list]:
    """Predictions per task for the test texts of tasks `which`, in one call when no task id is given."""
    if not task_given:
        texts = [text for j in which for text in tasks[j].test.texts]
        flat = bank.predict(texts, ood_quantile=0)
        out, start = {}, 0
        for j in which:
            out[j] = flat[start:start + len(tasks[j].test)]
            start += len(tasks[j].test)
        return out
    out = {}
    for j in which:  # the oracle: a task not learned yet has no module, so the bank answers without its id
        given = tasks[j].name if j <= learned else None
        out[j] = bank.predict(tasks[j].test.texts, ood_quantile=0, task=given)
    return out


def run(tasks: list[TaskData], out_dir: Path, scenario: str = "class", base: str = DEFAULT_BASE, kind: str = DEFAULT_KIND,
        seed: int = 0, baselines: Sequence[str] | None = None, device: str = "auto",
        progress: bool = True, bank_dir: Path | None = None) -> dict:
    """Run the protocol on a fresh bank at `bank_dir` (default `out_dir/bank`, kept for inspection).
    Returns the results (see report.py); the report files are written by `report.write`."""
    from tqdm.auto import tqdm

    from ..classify.config import ClassificationConfig
    from . import baselines as baseline_lib
    from .baseline_models import Setting

    baselines = list(baseline_lib.BASELINES) if baselines is None else baselines  # default: every registered one
    unknown = [b for b in baselines if b not in baseline_lib.BASELINES]
    if unknown:
        raise AdapterBankError(f"unknown baseline {unknown[0]!r}; choose from: {', '.join(baseline_lib.BASELINES)}")
    config = ClassificationConfig(kind=kind, seed=seed)  # the bank's tasks and the trained baselines alike
    started = time.perf_counter()
    bank = AdapterBank.create(bank_dir or Path(out_dir) / "bank", base=base, device=device)
    task_given = scenario == "task"
    size = len(tasks)
    matrix: list[list[float | None]] = [[None] * size for _ in range(size)]
    stages, final = [], {}
    for i, task in enumerate(tqdm(tasks, desc="eval: adding tasks", unit="task", disable=not progress)):
        t0 = time.perf_counter()
        added = bank.add_task(task.name, task.train, config=config, progress=progress)
        t1 = time.perf_counter()
        final = _predict_tasks(bank, tasks, range(min(i + 2, size)), task_given, learned=i)
        for j, predictions in final.items():
            matrix[i][j] = _accuracy(predictions, tasks[j].test.targets)
        stages.append({"task": task.name, "add_task_s": round(t1 - t0, 2), "eval_s": round(time.perf_counter() - t1, 2),
                       "peak_rss_mb": _peak_rss_mb(), "depth": added.record["config"].get("depth")})
    oracle = _predict_tasks(bank, tasks, range(size), task_given=True, learned=size - 1)
    oracle_per_task = [_accuracy(oracle[j], tasks[j].test.targets) for j in range(size)]
    routing = None
    if not task_given:
        owners = {}
        for task in tasks:
            for label in task.labels:
                owners.setdefault(label, set()).add(task.name)
        right = total = 0
        for j, predictions in final.items():
            for p, gold in zip(predictions, tasks[j].test.targets):
                accepted = {tasks[j].name} | (owners[gold] if scenario == "class" else set())
                right += p.task in accepted
                total += 1
        routing = right / total

    t0 = time.perf_counter()
    setting = Setting(tasks, bank.base, bank.upper_layers, config, task_given=task_given, progress=progress)
    shared = baseline_lib.Shared(setting)
    zero = shared.zero_training
    # frozen_embeddings_s: the frozen base's embeddings shared by FWT's reference and the ncm baseline
    wall = {"bank_s": round(t0 - started, 1), "frozen_embeddings_s": round(time.perf_counter() - t0, 1)}
    results_baselines: dict[str, dict] = {}
    for name in baselines:
        b0 = time.perf_counter()
        results_baselines[name] = baseline_lib.BASELINES[name].run(shared)
        results_baselines[name]["wall_s"] = round(time.perf_counter() - b0, 1)
        wall[f"{name}_s"] = results_baselines[name]["wall_s"]
    wall["total_s"] = round(time.perf_counter() - started, 1)
    summary = metrics.summary(matrix, zero)
    return {
        "scenario": scenario,
        "tasks": [task.labels for task in tasks],
        "task_names": [task.name for task in tasks],
        "accuracy_matrix": matrix,
        "average_accuracy": summary["average_accuracy"],
        "bwt": summary["bwt"],
        "fwt": summary["fwt"],
        "forgetting": summary["forgetting"],
        "routing_accuracy": routing,
        "oracle_accuracy": sum(oracle_per_task) / size,
        "oracle_per_task": oracle_per_task,
        "zero_training_accuracy": zero,
        "baselines": results_baselines,
        "stages": stages,
        "wall_s": wall,
        "peak_rss_mb": _peak_rss_mb(),
        "config": {"base": bank.base_id, "kind": kind, "seed": seed, "train_texts": [len(t.train) for t in tasks],
                   "test_texts": [len(t.test) for t in tasks]},
    }
