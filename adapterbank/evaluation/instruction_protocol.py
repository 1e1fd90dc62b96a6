"""Continual instruction tuning, measured: add sft tasks one at a time to a fresh causal bank, score after each.

After learning task i, the test prompts of tasks 0..i (and i+1, for forward transfer) go through normal
routed generation (greedy, every prompt answered: no out-of-scope fallback, as in the classification
protocol), as conversations in the chat layout. R[i][j] is the task-j score (exact match or ROUGE-L,
instruction_tasks.py). Oracle (module named) and routing accuracy are measured after the last task.
Baselines (INSTRUCTION_BASELINES) share the base, the data and each task's training config:
`base` (no module, zero-shot; also FWT's reference), `joint` (one module on all tasks at once),
`seqlora` (one module trained through the tasks in order).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..core.models import DEFAULT_CAUSAL_BASE
from ..errors import AdapterBankError
from . import metrics
from .baselines import Baseline
from .instruction_tasks import InstructionTask, answer_tokens, as_records

MAX_ANSWER_TOKENS = 64  # cap on generated tokens per test prompt (free-form tasks)
DEFAULT_BASE = DEFAULT_CAUSAL_BASE


@dataclass
class Setting:
    """What the baselines share: the tasks, the bank's base, the training config, the answer lengths."""

    tasks: list[InstructionTask]
    bank: object  # the evaluated CausalBank (its base and tokenizer)
    config_for: Callable[[InstructionTask], object]  # the task's SFTConfig
    answer_tokens: list[int]
    batch_size: int
    progress: bool


def _module_answers(setting: Setting, directory: Path | None, which: Sequence[int]) -> dict[int, float]:
    """Scores of tasks `which` answered by one PEFT module (or the bare base when `directory` is None),
    through the bank's own generation path (chat layout, batched)."""
    from ..causal.chat import render_prompt
    from ..causal.generation import VersionGenerator
    from ..kinds import get_kind

    base = setting.bank.base
    generator = VersionGenerator(base.model, base.tokenizer)
    kind = setting.config_for(setting.tasks[0]).kind
    scores = {}
    for j in which:
        task = setting.tasks[j]
        prompts = [render_prompt(base.tokenizer, c) for c in task.conversations()]
        modules = ["module" if directory is not None else None] * len(prompts)
        texts = generator.generate(prompts, modules, {"module": (directory, get_kind(kind).name)} if directory else {},
                                   setting.batch_size, {"max_new_tokens": setting.answer_tokens[j], "do_sample": False})
        scores[j] = task.score(texts)
    return scores


def _train(setting: Setting, examples: list, config, peft_model=None):
    from ..causal.sft import tokenize_examples, train_sft
    from ..core.encoding import pad_id_of

    base = setting.bank.base
    tokens = tokenize_examples(base.tokenizer, examples, int(base.model.config.max_position_embeddings))
    return train_sft(base.model, tokens, pad_id_of(base.tokenizer), config, progress=setting.progress,
                     description="baseline", peft_model=peft_model).peft_model


def _zero(setting: Setting) -> list[float]:
    """Each task's score by the base alone (chat layout, no module): zero-shot, and FWT's reference."""
    per_task = _module_answers(setting, None, range(len(setting.tasks)))
    return [per_task[j] for j in range(len(setting.tasks))]


def _base(setting: Setting, zero: list[float]) -> dict:
    return {"average_accuracy": sum(zero) / len(zero), "bwt": None, "forgetting": None, "per_task_accuracy": zero}


def _joint(setting: Setting, zero: list[float]) -> dict:
    import dataclasses
    import random

    from ..kinds import save_module

    examples = [e for task in setting.tasks for e in task.train]
    random.Random(0).shuffle(examples)
    first = setting.config_for(setting.tasks[0])  # each example seen as often as in its own task
    epochs = max(c.resolved_epochs(len(t.train)) for t, c in ((t, setting.config_for(t)) for t in setting.tasks))
    model = _train(setting, examples, dataclasses.replace(first, epochs=epochs, max_steps=None))
    with tempfile.TemporaryDirectory() as scratch:
        save_module(model, Path(scratch))
        per_task = _module_answers(setting, Path(scratch), range(len(setting.tasks)))
    scores = [per_task[j] for j in range(len(setting.tasks))]
    return {"average_accuracy": sum(scores) / len(scores), "bwt": None, "forgetting": None, "per_task_accuracy": scores}


def _seqlora(setting: Setting, zero: list[float]) -> dict:
    from ..kinds import save_module

    size = len(setting.tasks)
    matrix: list[list[float | None]] = [[None] * size for _ in range(size)]
    model = None
    for i, task in enumerate(setting.tasks):
        model = _train(setting, task.train, setting.config_for(task), peft_model=model)
        with tempfile.TemporaryDirectory() as scratch:
            save_module(model, Path(scratch))
            for j, score in _module_answers(setting, Path(scratch), range(min(i + 2, size))).items():
                matrix[i][j] = score
    return {**metrics.summary(matrix, zero), "accuracy_matrix": matrix}


INSTRUCTION_BASELINES: dict[str, Baseline] = {b.name: b for b in (
    Baseline("base", "the base model with no module, zero-shot (also the forward-transfer reference)", _base),
    Baseline("joint", "one module trained on every task at once (the usual upper bound)", _joint),
    Baseline("seqlora", "one module fine-tuned through the tasks in order (catastrophic forgetting)", _seqlora),
)}


def run(tasks: list[InstructionTask], out_dir: Path, base: str = DEFAULT_BASE, kind: str | None = None, seed: int = 0,
        baselines: Sequence[str] = tuple(INSTRUCTION_BASELINES), device: str = "auto", progress: bool = True,
        bank_dir: Path | None = None, batch_size: int = 16, settings: dict | None = None) -> dict:
    """Run the protocol on a fresh causal bank at `bank_dir` (default `out_dir/bank`, kept). `settings`:
    SFTConfig fields for every task (and the trained baselines). Returns results for report.write."""
    from tqdm.auto import tqdm

    from ..bank import AdapterBank
    from ..causal.config import SFTConfig
    from ..kinds import DEFAULT_KIND, build_config
    from .protocol import _peak_rss_mb

    unknown = [b for b in baselines if b not in INSTRUCTION_BASELINES]
    if unknown:
        raise AdapterBankError(f"unknown baseline {unknown[0]!r}; choose from: {', '.join(INSTRUCTION_BASELINES)}")
    values = {"kind": kind or DEFAULT_KIND, "seed": seed, **(settings or {})}
    config = build_config(SFTConfig, "causal", values)  # checked before the bank exists
    started = time.perf_counter()
    bank = AdapterBank.create(bank_dir or Path(out_dir) / "bank", base=base, device=device)
    tokenizer = bank.base.tokenizer
    lengths = [answer_tokens(tokenizer, task, MAX_ANSWER_TOKENS) for task in tasks]
    size = len(tasks)

    def answer(which, task_given: bool) -> dict[int, list]:
        return {j: bank.chat(tasks[j].conversations(), max_new_tokens=lengths[j], ood_quantile=0, batch_size=batch_size,
                             task=tasks[j].name if task_given else None) for j in which}

    matrix: list[list[float | None]] = [[None] * size for _ in range(size)]
    stages, final = [], {}
    for i, task in enumerate(tqdm(tasks, desc="eval: adding tasks", unit="task", disable=not progress)):
        t0 = time.perf_counter()
        bank.add_task(task.name, as_records(task.train), config=config, progress=progress)
        t1 = time.perf_counter()
        final = answer(range(min(i + 2, size)), task_given=False)  # task i+1 not learned yet: forward transfer
        for j, generations in final.items():
            matrix[i][j] = tasks[j].score([g.text for g in generations])
        stages.append({"task": task.name, "add_task_s": round(t1 - t0, 2), "eval_s": round(time.perf_counter() - t1, 2),
                       "peak_rss_mb": _peak_rss_mb()})
    oracle = answer(range(size), task_given=True)
    oracle_per_task = [tasks[j].score([g.text for g in oracle[j]]) for j in range(size)]
    routed = [(g.task, tasks[j].name) for j, generations in final.items() for g in generations]  # after the last task
    routing = sum(chosen == own for chosen, own in routed) / len(routed)

    t0 = time.perf_counter()
    setting = Setting(tasks, bank, lambda task: config, lengths, batch_size, progress)
    wall = {"bank_s": round(t0 - started, 1)}
    results_baselines: dict[str, dict] = {}
    zero = _zero(setting)
    wall["zero_shot_s"] = round(time.perf_counter() - t0, 1)
    for name in baselines:
        b0 = time.perf_counter()
        results_baselines[name] = INSTRUCTION_BASELINES[name].run(setting, zero)
        results_baselines[name]["wall_s"] = round(time.perf_counter() - b0, 1)
        wall[f"{name}_s"] = results_baselines[name]["wall_s"]
    wall["total_s"] = round(time.perf_counter() - started, 1)
    summary = metrics.summary(matrix, zero)
    return {
        "scenario": "instruction", "tasks": [[task.metric] for task in tasks], "task_names": [task.name for task in tasks],
        "task_metrics": {task.name: task.metric for task in tasks},
        "accuracy_matrix": matrix, "average_accuracy": summary["average_accuracy"], "bwt": summary["bwt"],
        "fwt": summary["fwt"], "forgetting": summary["forgetting"], "routing_accuracy": routing,
        "oracle_accuracy": sum(oracle_per_task) / size, "oracle_per_task": oracle_per_task,
        "zero_training_accuracy": zero, "baselines": results_baselines, "stages": stages, "wall_s": wall,
        "peak_rss_mb": _peak_rss_mb(),
        "config": {"base": bank.base_id, "kind": config.kind, "seed": seed, "sft": {k: v for k, v in values.items()},
                   "answer_tokens": lengths, "train_examples": [len(t.train) for t in tasks],
                   "test_examples": [len(t.test) for t in tasks]},
    }
