"""CLINC150 split into a few small tasks: task-agnostic accuracy, add-task time, size on disk. Prints JSON.

    python benchmarks/clinc_small.py [--data ../shared/data/clinc150] [--tasks 3] [--intents 5] [--kinds lora,prompt]

Intents are drawn with a seeded shuffle from the 150 and dealt into disjoint tasks; each task trains on
its intents' training texts; predict sees every test text of those intents with no task id.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from adapterbank import AdapterBank, load_dataset  # noqa: E402
from common import subset  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "clinc150"


def split_tasks(train, n_tasks: int, per_task: int, seed: int) -> list[list[str]]:
    intents = sorted(train.labels)
    random.Random(seed).shuffle(intents)
    chosen = intents[: n_tasks * per_task]
    return [chosen[i * per_task : (i + 1) * per_task] for i in range(n_tasks)]


def run_kind(kind: str, tasks: list[list[str]], train, test, seed: int, workdir: Path) -> dict:
    bank = AdapterBank.create(workdir / f"bank-{kind}", device="cpu")
    per_task = []
    for number, labels in enumerate(tasks):
        name = f"t{number}"
        started = time.perf_counter()
        info = bank.add_task(name, subset(train, labels, f"{name}-train"), eval=subset(test, labels, f"{name}-test"),
                             kind=kind, seed=seed, progress=False)
        per_task.append({"task": name, "labels": labels, "add_task_s": round(time.perf_counter() - started, 2),
                         "within_task_accuracy": info.record["metrics"]["eval_accuracy"],
                         "epochs": info.record["hyperparameters"]["epochs"],
                         "train_examples_per_s": info.record["metrics"]["train_examples_per_s"],
                         "size_bytes": info.size_bytes})
    task_of = {label: f"t{i}" for i, labels in enumerate(tasks) for label in labels}
    evaluation = subset(test, list(task_of), "test")
    started = time.perf_counter()
    predictions = bank.predict(evaluation.texts)
    predict_s = time.perf_counter() - started
    correct = sum(p.label == y for p, y in zip(predictions, evaluation.targets))
    routed = sum(p.task == task_of[y] for p, y in zip(predictions, evaluation.targets))
    return {
        "task_agnostic_accuracy": round(correct / len(evaluation), 4),
        "routing_accuracy": round(routed / len(evaluation), 4),
        "test_texts": len(evaluation),
        "mean_add_task_s": round(sum(t["add_task_s"] for t in per_task) / len(per_task), 2),
        "task_size_bytes": per_task[0]["size_bytes"],
        "predict_texts_per_s": round(len(evaluation) / predict_s, 1),
        "tasks": per_task,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--intents", type=int, default=5, help="intents per task")
    parser.add_argument("--kinds", default="lora,prompt")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train, test = load_dataset(args.data / "train.jsonl"), load_dataset(args.data / "test.jsonl")
    tasks = split_tasks(train, args.tasks, args.intents, args.seed)
    result = {"benchmark": "clinc_small", "data": str(args.data), "tasks": args.tasks, "intents_per_task": args.intents,
              "seed": args.seed, "base": "sentence-transformers/all-MiniLM-L6-v2", "torch_threads": torch.get_num_threads(),
              "machine": f"{platform.machine()} {os.cpu_count()} cpu", "kinds": {}}
    with tempfile.TemporaryDirectory() as workdir:
        for kind in args.kinds.split(","):
            result["kinds"][kind] = run_kind(kind, tasks, train, test, args.seed, Path(workdir))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
