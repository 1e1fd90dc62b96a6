"""Instruction tasks for continual evaluation on a causal bank: folders of sft data, and how answers are scored.

A data directory holds one sub-folder per task (learned in alphabetical order unless an order is
given), each with `train.jsonl` and `test.jsonl` in the sft format (prompt/response or messages) and
optionally `eval.json` declaring `{"metric": "exact_match" | "rouge_l"}`. Without it, a task whose
responses are all short labels (at most SHORT_LABEL_WORDS words) is scored by exact match after
normalisation, any other by ROUGE-L F1 (Google's `rouge-score`, with stemming, as papers report it).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..errors import DataError

SHORT_LABEL_WORDS = 4
EVAL_FILE = "eval.json"


def normalise(text: str) -> str:
    """Lower case, whitespace collapsed, surrounding punctuation and quotes dropped (SQuAD-style)."""
    return " ".join(text.lower().split()).strip(string.punctuation + " \"'`")


def exact_match(prediction: str, reference: str) -> float:
    return float(normalise(prediction) == normalise(reference))


def rouge_l(prediction: str, reference: str) -> float:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(reference, prediction)["rougeL"].fmeasure


METRICS: dict[str, Callable[[str, str], float]] = {"exact_match": exact_match, "rouge_l": rouge_l}


@dataclass
class InstructionTask:
    name: str
    train: list  # sft.Example
    test: list
    metric: str

    def score(self, predictions: Sequence[str]) -> float:
        """Mean metric of the predictions against the test responses (the first line of each prediction
        for exact match: a label answer ends at the line)."""
        metric = METRICS[self.metric]
        if self.metric == "exact_match":
            predictions = [p.strip().split("\n")[0] for p in predictions]
        return sum(metric(p, e.response) for p, e in zip(predictions, self.test)) / len(self.test)

    def conversations(self) -> list[list[dict]]:
        return [list(e.context) for e in self.test]


def as_records(examples: Sequence) -> list[dict]:
    """Examples back as sft records (what `add_task` reads)."""
    return [{"messages": [*e.context, {"role": "assistant", "content": e.response}]} for e in examples]


def load_instruction_tasks(data_dir: str | Path, order: Sequence[str] | None = None) -> list[InstructionTask]:
    """The tasks, in order, every file read and checked before anything trains."""
    import json

    from ..causal.sft import load_examples
    from ..data import read_json
    from ..store.registry import validate_task_name

    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if order:
        missing = [o for o in order if o not in folders]
        if missing:
            raise DataError(f"--order: no task folder {missing[0]!r} in {root} (folders: {', '.join(folders)})")
        folders = list(order)
    if len(folders) < 1:
        raise DataError(f"{root}: no task folders (one sub-folder per task with train.jsonl and test.jsonl)")
    tasks = []
    for name in folders:
        validate_task_name(name)
        folder = root / name
        train, _ = load_examples(folder / "train.jsonl")
        test, _ = load_examples(folder / "test.jsonl")
        declared = read_json(folder / EVAL_FILE) if (folder / EVAL_FILE).exists() else {}
        metric = declared.get("metric") if isinstance(declared, dict) else None
        if metric is None:
            short = all(len(e.response.split()) <= SHORT_LABEL_WORDS for e in train + test)
            metric = "exact_match" if short else "rouge_l"
        if metric not in METRICS:
            raise DataError(f"{folder / EVAL_FILE}: metric {json.dumps(metric)}: choose one of {', '.join(METRICS)}")
        tasks.append(InstructionTask(name, train, test, metric))
    return tasks


def answer_tokens(tokenizer, task: InstructionTask, cap: int) -> int:
    """Tokens to generate for a task's test prompts: its longest training response, plus a margin, at most `cap`."""
    longest = max(len(ids) for ids in tokenizer([e.response for e in task.train], add_special_tokens=False)["input_ids"])
    return max(1, min(cap, longest + 4))

