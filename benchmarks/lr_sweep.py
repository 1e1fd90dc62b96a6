"""Choosing a kind's default learning rate on validation data (never test texts). Prints JSON.

    python benchmarks/lr_sweep.py --kind ia3 --lrs 3e-3,1e-2,3e-2,1e-1 [--tasks 3] [--data ../shared/data/clinc150]

CLINC150's intents are dealt into tasks of 10 by a seeded shuffle (seed 0, as routing.py does); each
task is trained with add-task's defaults but the learning rate, on all its training texts, and scored
on its intents' texts of the *validation* split with the task given (within-task accuracy).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from adapterbank import AdapterBank, load_dataset  # noqa: E402
from common import subset  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "clinc150"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--kind", required=True)
    parser.add_argument("--lrs", required=True, help="comma-separated learning rates")
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train, validation = load_dataset(args.data / "train.jsonl"), load_dataset(args.data / "validation.jsonl")
    intents = sorted(train.labels)
    random.Random(args.seed).shuffle(intents)
    tasks = [intents[i * 10:(i + 1) * 10] for i in range(args.tasks)]
    out = {"data": str(args.data), "kind": args.kind, "tasks": args.tasks, "split": "validation", "runs": []}
    with tempfile.TemporaryDirectory() as workdir:
        bank = AdapterBank.create(Path(workdir) / "bank", device="cpu")
        for lr in [float(x) for x in args.lrs.split(",")]:
            accuracies, started = [], time.perf_counter()
            for number, labels in enumerate(tasks):
                name = f"lr{lr:g}-t{number}"
                info = bank.add_task(name, subset(train, labels, name), eval=subset(validation, labels, f"{name}-val"),
                                     kind=args.kind, lr=lr, seed=args.seed, progress=False)
                accuracies.append(info.record["metrics"]["eval_accuracy"])
            out["runs"].append({"lr": lr, "validation_accuracy": round(sum(accuracies) / len(accuracies), 4),
                                "per_task": accuracies, "seconds": round(time.perf_counter() - started, 1)})
    best = max(out["runs"], key=lambda run: run["validation_accuracy"])
    out["best_lr"] = best["lr"]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
