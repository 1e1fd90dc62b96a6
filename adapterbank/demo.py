"""The packaged demo: a small bank built from the hand-written intent data that ships with adapterbank."""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

from .bank import AdapterBank
from .classify.bank import Prediction
from .data import load_dataset
from .kinds import DEFAULT_KIND

DEMO_TASKS = ("banking", "travel", "home", "greeting")  # disjoint labels; "greeting" has a single label


@dataclass
class DemoResult:
    bank: AdapterBank
    texts: list[str]
    gold: list[str]
    predictions: list[Prediction]
    seconds: float

    @property
    def accuracy(self) -> float:
        return sum(p.label == g for p, g in zip(self.predictions, self.gold)) / len(self.gold)


def demo_data_dir() -> Path:
    return Path(str(resources.files("adapterbank") / "demo_data"))


def run_demo(bank_path: str | Path, kind: str = DEFAULT_KIND, device: str = "auto", progress: bool = True,
             echo: Callable[[str], None] = print) -> DemoResult:
    """Create a bank on the default base, add every demo task, and predict their test texts without task ids."""
    started = time.perf_counter()
    data = demo_data_dir()
    echo(f"Creating bank at {bank_path} (base: packaged all-MiniLM-L6-v2)")
    bank = AdapterBank.create(bank_path, device=device)
    texts, gold = [], []
    for number, name in enumerate(DEMO_TASKS, start=1):
        train, test = load_dataset(data / name / "train.jsonl"), load_dataset(data / name / "test.jsonl")
        texts += test.texts
        gold += test.targets
        echo(f"[{number}/{len(DEMO_TASKS)}] add-task {name}: {len(train)} texts, labels {', '.join(train.labels)}")
        info = bank.add_task(name, train, eval=test, kind=kind, progress=progress)
        metrics = info.record["metrics"]
        accuracy = metrics.get("eval_accuracy")
        summary = f"eval accuracy {accuracy:.1%}" if accuracy is not None else "single label: router only"
        echo(f"      done in {metrics['add_task_seconds']:.1f} s, {summary}")
    predictions = bank.predict(texts)
    return DemoResult(bank, texts, gold, predictions, time.perf_counter() - started)
