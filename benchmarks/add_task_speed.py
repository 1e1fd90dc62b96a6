"""add-task against a plain PEFT training loop, same data, same epochs: examples/s and validation accuracy. Prints JSON.

    python benchmarks/add_task_speed.py [--quick] [--data ../shared/data/clinc150] [--seed 0] [--workloads task,full]

Workloads: `task` is one CLINC150 task (10 intents drawn by a seeded shuffle, all their training texts);
`full` is the whole training set (150 intents). Validation texts come from CLINC150's validation split.

The plain loop is what a user writes first: LoRA r=8 on query/value of every layer, a linear head on
mean-pooled features, AdamW with a one-cycle schedule, shuffled batches of 32 tokenized and padded to
the batch's longest text, a full forward and backward per step. `bucketed` is that same loop with the
texts tokenized once and batched by length (the first lever alone). `add-task` is `AdapterBank.add_task`
with its defaults, timed end to end (tokenize, the frozen lower pass, router statistics, the depth search,
training, saving); `add_task_depth1` is add-task with `depth=1` (no search: the same training work as the
loops, so `speedup_depth1` compares the engines). Every variant runs the epochs add-task chooses for the
data, so examples/s compare like for like.
The `task` workload also reports add-task with prompt tuning (`add_task_prompt`, `prompt_speedup`).

`--quick` keeps the `task` workload and shrinks `full` to 10 training texts per intent (same keys).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from peft import LoraConfig, TaskType, get_peft_model  # noqa: E402

from adapterbank import AdapterBank, load_dataset  # noqa: E402
from common import subset  # noqa: E402
from adapterbank.kinds import quiet_peft  # noqa: E402
from adapterbank.core.encoding import collate, length_batches, mean_pool, pad_id_of, tokenize  # noqa: E402
from adapterbank import ClassificationConfig  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "clinc150"
PLAIN_LR = 2e-3
HEAD_LR = 1e-2


def sync() -> None:
    """Waits for queued CUDA work so the clock reads what the GPU did (nothing to wait for on the CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def plain_loop(base, train, validation, epochs: int, seed: int, bucketed: bool) -> dict:
    """The reference PEFT loop (see the module docstring); returns examples/s and validation accuracy."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    labels = train.labels
    index = {label: i for i, label in enumerate(labels)}
    device = next(base.model.parameters()).device  # the bank's (--device)
    targets = torch.tensor([index[t] for t in train.targets], device=device)
    config = LoraConfig(task_type=TaskType.FEATURE_EXTRACTION, r=8, lora_alpha=16, lora_dropout=0.05,
                        target_modules=["query", "value"])
    with quiet_peft():
        model = get_peft_model(copy.deepcopy(base.model), config)
    head = torch.nn.Linear(base.model.config.hidden_size, len(labels)).to(device)
    optimizer = torch.optim.AdamW([{"params": [p for p in model.parameters() if p.requires_grad], "lr": PLAIN_LR},
                                   {"params": list(head.parameters()), "lr": HEAD_LR}], weight_decay=0.01)
    batch_size, n = 32, len(train)
    steps = epochs * -(-n // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[PLAIN_LR, HEAD_LR], total_steps=steps, pct_start=0.1)
    pad = pad_id_of(base.tokenizer)
    token_ids = tokenize(base.tokenizer, train.texts) if bucketed else None
    model.train()
    sync()
    started = time.perf_counter()
    for _ in range(epochs):
        if bucketed:
            batches = length_batches(token_ids, batch_size, rng)
        else:
            order = list(range(n))
            rng.shuffle(order)
            batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
        for batch in batches:
            if bucketed:
                input_ids, mask = collate([token_ids[i] for i in batch], pad, device)
            else:
                encoded = base.tokenizer([train.texts[i] for i in batch], padding=True, truncation=True,
                                         max_length=128, return_tensors="pt")
                input_ids, mask = encoded["input_ids"].to(device), encoded["attention_mask"].to(device)
            features = mean_pool(model(input_ids=input_ids, attention_mask=mask).last_hidden_state, mask)
            loss = torch.nn.functional.cross_entropy(head(features), targets[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    sync()
    seconds = time.perf_counter() - started
    model.eval()
    val_ids = tokenize(base.tokenizer, validation.texts)
    correct = 0
    with torch.no_grad():
        for batch in length_batches(val_ids, 64):
            input_ids, mask = collate([val_ids[i] for i in batch], pad, device)
            predicted = head(mean_pool(model(input_ids=input_ids, attention_mask=mask).last_hidden_state, mask)).argmax(-1)
            correct += sum(labels[p] == validation.targets[i] for p, i in zip(predicted.tolist(), batch))
    return {"seconds": round(seconds, 2), "examples_per_s": round(n * epochs / seconds, 1),
            "validation_accuracy": round(correct / len(validation), 4)}


def add_task(bank, name, train, validation, kind="lora", **settings) -> dict:
    """Timed end to end, without validation (the plain loop's timing excludes its validation too);
    validation accuracy then comes from the bank's own inference path with the task given."""
    sync()
    started = time.perf_counter()
    info = bank.add_task(name, train, kind=kind, progress=False, **settings)
    sync()
    seconds = time.perf_counter() - started
    epochs = info.record["hyperparameters"]["epochs"]
    predictions = bank.predict(validation.texts, task=name, ood_quantile=0)
    accuracy = sum(p.label == y for p, y in zip(predictions, validation.targets)) / len(validation)
    return {"seconds": round(seconds, 2), "examples_per_s": round(len(train) * epochs / seconds, 1),
            "validation_accuracy": round(accuracy, 4),
            "training_loop_examples_per_s": info.record["metrics"]["train_examples_per_s"], "epochs": epochs,
            "depth": info.record["config"]["depth"], "depth_search": info.record["metrics"].get("depth_search")}


def run_workload(bank, name, train, validation, seed, prompt=False) -> dict:
    epochs = ClassificationConfig().resolved_epochs(len(train))
    result = {"train_texts": len(train), "validation_texts": len(validation), "labels": len(train.labels), "epochs": epochs}
    result["add_task"] = add_task(bank, name, train, validation)  # the default: the depth search included
    result["add_task_depth1"] = add_task(bank, f"{name}-depth1", train, validation, depth=1)  # the same work as the loops
    result["plain"] = plain_loop(bank.base, train, validation, epochs, seed, bucketed=False)
    result["bucketed"] = plain_loop(bank.base, train, validation, epochs, seed, bucketed=True)
    result["speedup"] = round(result["add_task"]["examples_per_s"] / result["plain"]["examples_per_s"], 2)
    result["speedup_depth1"] = round(result["add_task_depth1"]["examples_per_s"] / result["plain"]["examples_per_s"], 2)
    result["accuracy_delta"] = round(100 * (result["add_task"]["validation_accuracy"]
                                            - result["plain"]["validation_accuracy"]), 2)
    if prompt:  # prompt tuning needs full passes (the soft prompt enters at layer 0): reported, not targeted
        result["add_task_prompt"] = add_task(bank, f"{name}-prompt", train, validation, kind="prompt")
        result["prompt_speedup"] = round(result["add_task_prompt"]["examples_per_s"] / result["plain"]["examples_per_s"], 2)
        result["prompt_accuracy_delta"] = round(100 * (result["add_task_prompt"]["validation_accuracy"]
                                                       - result["plain"]["validation_accuracy"]), 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workloads", default="task,full", help="comma-separated: task, full")
    parser.add_argument("--device", default="cpu", help="cpu (the README's figures), cuda, auto")
    args = parser.parse_args()
    train, validation = load_dataset(args.data / "train.jsonl"), load_dataset(args.data / "validation.jsonl")
    intents = sorted(train.labels)
    random.Random(args.seed).shuffle(intents)
    workloads = {"task": (intents[:10], None), "full": (intents, 10 if args.quick else None)}
    out: dict = {"data": str(args.data), "quick": args.quick, "seed": args.seed,
                 "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                             "python": platform.python_version(), "torch": torch.__version__}}
    workdir = Path(tempfile.mkdtemp(prefix="adapterbank-speed-"))
    try:
        bank = AdapterBank.create(workdir / "bank", device=args.device)
        for name in [w.strip() for w in args.workloads.split(",") if w.strip()]:
            if name not in workloads:
                parser.error(f"unknown workload {name!r}; choose from: {', '.join(workloads)}")
            labels, per_label = workloads[name]
            out[name] = run_workload(bank, name, subset(train, labels, f"{name}-train", per_label),
                                     subset(validation, labels, f"{name}-validation"), args.seed, prompt=name == "task")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    headline = out.get("full") or out.get("task")
    out["speedup"], out["accuracy_delta"] = headline["speedup"], headline["accuracy_delta"]
    out["speedup_depth1"] = headline["speedup_depth1"]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
