"""Module depth on a hard task: sentence_suite/sst5 (5-way fine-grained sentiment, 8,544 training texts), or
another `--data` folder (without a validation split, only test accuracy is reported). Prints JSON.

    python benchmarks/depth.py [--data DIR] [--depths 1,2,3,6,auto] [--device cpu] [--seed 0] [--no-plain]

For each depth, add-task trains the task's module on that many top layers (`--depth`; 1: the bank's top
layer, no search; `auto`: add-task's default, chosen on a tenth of the training texts, classify/depth.py)
and the task's validation and test texts are predicted with the task given (oracle accuracy: the module,
not the router, is measured). Reference: the plain full-depth PEFT loop of add_task_speed.py (LoRA
r=8 on query/value of every layer, linear head, same epochs). Also reported per depth: add-task seconds and
predict's texts/s with the task given (the price of depth at inference).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from adapterbank import AdapterBank, load_dataset  # noqa: E402
from add_task_speed import plain_loop, sync  # noqa: E402
from common import DATA_ROOT  # noqa: E402


def accuracy(bank, task, data) -> tuple[float, float]:
    """(accuracy with the task given, texts/s of that predict)."""
    sync()
    started = time.perf_counter()
    predictions = bank.predict(data.texts, task=task, ood_quantile=0)
    sync()
    seconds = time.perf_counter() - started
    return round(sum(p.label == g for p, g in zip(predictions, data.targets)) / len(data), 4), round(len(data) / seconds, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA_ROOT / "sentence_suite" / "sst5")
    parser.add_argument("--depths", default="1,2,3,6", help="numbers of layers and/or auto (add-task chooses)")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain PEFT reference (50.1 %% on sst5, CPU)")
    parser.add_argument("--device", default="cpu", help="cpu (the README's figures), cuda, auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    train, test = (load_dataset(args.data / f"{split}.jsonl") for split in ("train", "test"))
    has_validation = (args.data / "validation.jsonl").exists()  # sst5 has one; the rest of sentence_suite does not
    validation = load_dataset(args.data / "validation.jsonl") if has_validation else None
    out: dict = {"data": str(args.data), "train_texts": len(train), "validation_texts": len(validation or []),
                 "test_texts": len(test), "seed": args.seed,
                 "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                             "python": platform.python_version(), "torch": torch.__version__, "device": args.device}}
    workdir = Path(tempfile.mkdtemp(prefix="adapterbank-depth-"))
    try:
        bank = AdapterBank.create(workdir / "bank", device=args.device)
        rows = []
        for depth in [d if d == "auto" else int(d) for d in args.depths.split(",")]:
            name = f"{args.data.name}-depth-{depth}"
            sync()
            started = time.perf_counter()
            info = bank.add_task(name, train, depth=depth, seed=args.seed, progress=False)
            sync()
            seconds = time.perf_counter() - started
            val_acc = accuracy(bank, name, validation)[0] if validation is not None else None
            test_acc, speed = accuracy(bank, name, test)
            rows.append({"depth": depth, "validation_accuracy": val_acc, "test_accuracy": test_acc,
                         "add_task_seconds": round(seconds, 1), "epochs": info.record["hyperparameters"]["epochs"],
                         "predict_texts_per_s": speed, "trained_depth": info.record["config"]["depth"],
                         **({"depth_search": info.record["metrics"]["depth_search"]} if depth == "auto" else {})})
            print(json.dumps(rows[-1]), flush=True)
        out["depths"] = rows
        if validation is not None:
            best = max(rows, key=lambda row: row["validation_accuracy"])
            out["chosen_on_validation"] = {"depth": best["depth"], "test_accuracy": best["test_accuracy"]}
        if not args.no_plain:
            plain = plain_loop(bank.base, train, test, rows[0]["epochs"], args.seed, bucketed=True)
            out["plain_full_depth_lora"] = {"test_accuracy": plain["validation_accuracy"], "seconds": plain["seconds"],
                                            "epochs": rows[0]["epochs"]}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
