"""The router on CLINC150 (15 tasks x 10 intents): accuracy per method, out-of-scope, speed. Prints JSON.

    python benchmarks/routing.py [--quick] [--data ../shared/data/clinc150] [--seed 0] [--cold-tasks 1000]

Intents are dealt into disjoint tasks by a seeded shuffle; each task is added to a fresh bank with the
default add-task settings; every test text of every task is predicted with no task id. The joint
baseline is one LoRA (r=8, every linear layer, 3 epochs, one-cycle lr 2e-3, batch 32) trained on all
intents at once. `--quick` uses 6 tasks, 40 training and 15 test texts per intent, 300 out-of-scope texts and 200
synthetic tasks for the cold-open figure (same keys; about 4 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
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

from adapterbank import AdapterBank, load_dataset  # noqa: E402
from common import crowding, subset  # noqa: E402
from adapterbank.core.encoding import collate, length_batches, mean_pool, pad_id_of, tokenize  # noqa: E402
from adapterbank.routing import methods  # noqa: E402
from adapterbank.routing.statistics import PACKED, pack_covariance, save_statistics  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "clinc150"
DEVICE = "cpu"  # --device


def sync() -> None:
    """Waits for queued CUDA work so the clock reads what the GPU did (nothing to wait for on the CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def score(predictions, gold, task_of):
    n = len(gold)
    return {"accuracy": round(sum(p.label == g for p, g in zip(predictions, gold)) / n, 4),
            "routing_accuracy": round(sum(p.task == task_of[g] for p, g in zip(predictions, gold)) / n, 4)}


def timed(fn):
    sync()
    started = time.perf_counter()
    result = fn()
    sync()
    return result, time.perf_counter() - started


def base_forward(bank, texts, batch_size=64):
    """The base model's own forward on the same texts: tokenize, length-batched, mean-pooled."""
    base = bank.base
    with torch.no_grad():
        ids = tokenize(base.tokenizer, texts)
        for batch in length_batches(ids, batch_size):
            input_ids, mask = collate([ids[i] for i in batch], pad_id_of(base.tokenizer), bank.device)
            mean_pool(base.model(input_ids=input_ids, attention_mask=mask).last_hidden_state, mask).cpu()  # synced, as predict's answers are


def joint_baseline(bank, train, test, labels):
    """One LoRA on every linear layer of every transformer layer, all intents at once."""
    from adapterbank.core.backbone import num_layers
    from adapterbank import ClassificationConfig
    from adapterbank.classify.training import module_features, train_classifier

    base = bank.base
    index = {label: i for i, label in enumerate(labels)}
    config = ClassificationConfig(kind="lora", epochs=3, lr=2e-3, batch_size=32)
    ids = tokenize(base.tokenizer, train.texts)
    trained, seconds = timed(lambda: train_classifier(base.model, base.tokenizer, ids, [index[t] for t in train.targets],
                                                       len(labels), config, upper_layers=num_layers(base.model),
                                                       progress=False))
    test_ids = tokenize(base.tokenizer, test.texts)
    correct = 0
    with torch.no_grad():
        for batch in length_batches(test_ids, 64):
            input_ids, mask = collate([test_ids[i] for i in batch], pad_id_of(base.tokenizer), bank.device)
            predicted = trained.head(module_features(trained.peft_model, input_ids, mask)).argmax(-1).tolist()
            correct += sum(labels[p] == test.targets[i] for p, i in zip(predicted, batch))
    return round(correct / len(test), 4), round(seconds, 1)


def oos_auroc(bank, in_scope: list[str], out_of_scope: list[str]) -> float:
    """Area under the ROC curve of the score the out-of-scope test thresholds (routing/scope.py: the routed
    task's own distance to its nearest class): the chance that an in-scope text scores above an out-of-scope one."""
    index = bank._index(bank._records())

    def scores(texts):
        features = bank.router_features(texts).cpu()
        return index.scope_scores(features, index.task_scores(features).argmax(-1))

    inside, outside = scores(in_scope), scores(out_of_scope)
    above = (inside[:, None] > outside[None, :]).float().mean() + 0.5 * (inside[:, None] == outside[None, :]).float().mean()
    return round(float(above), 4)


def cold_open(bank_dir: Path, template: str, n_tasks: int, texts: list[str], per_task: int = 10):
    """A bank of `n_tasks` synthetic tasks (copies of one real module; router statistics made from the real
    tasks' class means, each moved by a random offset of the size that separates two real classes, so the
    synthetic classes crowd the real ones): seconds from AdapterBank.open to the first routed prediction,
    the top-k time per 64 real texts (median and mean of 200 calls), the share of `texts` whose best task
    is the same with the large bank's shortlist (methods.py) as with every class scored exactly, and the
    top-k median for `mahalanobis` alone (the first stage)."""
    bank = AdapterBank.open(bank_dir, device=DEVICE)
    source = bank.task(template)
    dim = bank.registry.manifest["router"]["feature_dim"]
    real = bank._index(bank._records()).t["means"].clone()
    crowd = crowding(real)
    g = torch.Generator().manual_seed(0)
    packed = dict(zip(PACKED, pack_covariance(torch.eye(dim) / dim)))  # packed once: no eigh per synthetic task
    # a held-out distance table, as add-task writes: the first answer reads the routed task's factor from its file
    stats = {"counts": torch.full((per_task,), 50.0), **packed, "scope_quantiles": -torch.linspace(4.0, 1.0, 101)}
    for i in range(n_tasks):
        name = f"synthetic-{i:04d}"
        record = {**source.record, "labels": [f"{name}-{j}" for j in range(per_task)]}
        for key in ("id", "sequence", "created_at", "files", "name"):
            record.pop(key, None)
        with bank.registry.stage_task(name, record) as staging:
            for f in ("adapter_config.json", "adapter_model.safetensors", "head.safetensors"):
                shutil.copy(source.path / f, staging / f)
            save_statistics(staging, {**stats, "means": crowd(per_task, g)})
    bank.predict(["warm the index"])  # builds the index over every task in memory...
    bank._save_index()  # ... and saves it, as add-task and remove do (reads never write)
    features = bank.router_features(texts).cpu()
    del bank
    (b, _), seconds = timed(lambda: (b := AdapterBank.open(bank_dir, device=DEVICE), b.predict(["what is my balance"])))
    index = b._index(b._records())  # the opened bank's index: it reads task files (factors) as answers need them
    batch = features[:64]
    index.route(batch, top_k=3, ood_quantile=0)  # warm-up: the second stage's blends of the batch's candidates
    # each call timed apart: the median is the figure (this VM's hiccups move a mean by a millisecond), the mean beside it
    calls = sorted(timed(lambda: index.route(batch, top_k=3, ood_quantile=0))[1] for _ in range(200))
    topk_median, topk_mean = calls[len(calls) // 2], sum(calls) / len(calls)
    index.route(batch, top_k=3, ood_quantile=0, method="mahalanobis")
    first_stage = sorted(timed(lambda: index.route(batch, top_k=3, ood_quantile=0, method="mahalanobis"))[1] for _ in range(200))
    shortlisted = index.task_scores(features).argmax(-1)
    exact_from = methods.SHORTLIST_MIN_CLASSES
    methods.SHORTLIST_MIN_CLASSES = 10 ** 9
    try:
        exact = index.task_scores(features).argmax(-1)
    finally:
        methods.SHORTLIST_MIN_CLASSES = exact_from
    agreement = float((shortlisted == exact).float().mean())
    return (round(seconds, 3), round(topk_median * 1000, 3), round(topk_mean * 1000, 3), len(index.t["means"]),
            round(agreement, 5), round(first_stage[len(first_stage) // 2] * 1000, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cold-tasks", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu (the README's figures), cuda, auto")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    torch.manual_seed(args.seed)
    n_tasks, per_label, test_per_label, n_oos, cold_tasks = (6, 40, 15, 300, 200) if args.quick else (15, None, None, None, 1000)
    cold_tasks = args.cold_tasks or cold_tasks
    train, test = load_dataset(args.data / "train.jsonl"), load_dataset(args.data / "test.jsonl")
    oos = load_dataset(args.data / "oos_test.jsonl")
    oos_texts = oos.texts[:n_oos] if n_oos else oos.texts
    intents = sorted(train.labels)
    random.Random(args.seed).shuffle(intents)
    tasks = [intents[i * 10:(i + 1) * 10] for i in range(n_tasks)]
    task_of = {label: f"t{i:02d}" for i, labels in enumerate(tasks) for label in labels}
    every = [label for labels in tasks for label in labels]
    test_set = subset(test, every, "test", test_per_label)
    out: dict = {"data": str(args.data), "quick": args.quick, "seed": args.seed, "tasks": n_tasks, "intents_per_task": 10,
                 "train_texts_per_intent": per_label or "all", "test_texts": len(test_set), "oos_texts": len(oos_texts),
                 "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                             "python": platform.python_version(), "torch": torch.__version__,
                             # AVX2 / AVX512: the top-k figures' int8 shortlist runs (methods.py); DEFAULT: fp32
                             "cpu_capability": torch.backends.cpu.get_cpu_capability()}}
    workdir = Path(tempfile.mkdtemp(prefix="adapterbank-routing-"))
    try:
        bank = AdapterBank.create(workdir / "bank", device=DEVICE)
        add_seconds, searches = [], []
        for i, labels in enumerate(tasks):
            info, seconds = timed(lambda: bank.add_task(f"t{i:02d}", subset(train, labels, f"t{i}", per_label),
                                                        progress=False))
            add_seconds.append(seconds)
            searches.append(info.record["metrics"].get("depth_search"))
        out["add_task_seconds_mean"] = round(sum(add_seconds) / len(add_seconds), 1)
        out["depth_search"] = searches  # per task, in order: what add-task's default depth search measured and chose
        texts, gold = test_set.texts, test_set.targets
        bank.predict(texts[:64])  # warm-up: modules loaded, threads spun up
        methods = []
        router = bank.registry.manifest["router"]
        fused = router["label_weight"]  # the module's label probabilities times the router's label posterior (0: alone)
        for method, composition, k, weight in (
                ("prototype", "top1", 1, 0.0), ("mahalanobis", "top1", 1, 0.0), ("mahalanobis", "top1", 1, fused),
                ("task-covariance", "top1", 1, 0.0), ("task-covariance", "top1", 1, fused),
                ("task-covariance", "output", 3, fused), ("task-covariance", "weights", 3, fused)):
            predictions, seconds = timed(lambda: bank.predict(texts, method=method, composition=composition, top_k=k,
                                                              ood_quantile=0, label_weight=weight))
            methods.append({"method": method, "composition": composition, "top_k": k, "label_weight": weight,
                            **score(predictions, gold, task_of), "texts_per_s": round(len(texts) / seconds, 1)})
        _, base_seconds = timed(lambda: base_forward(bank, texts))
        out["base_forward_texts_per_s"] = round(len(texts) / base_seconds, 1)
        default = next(row for row in methods if row["method"] == router["method"] and row["composition"] == "top1"
                       and row["label_weight"] == fused)
        out["methods"] = methods
        out["routed_accuracy"], out["routing_accuracy"] = default["accuracy"], default["routing_accuracy"]
        out["throughput_ratio"] = round(default["texts_per_s"] / out["base_forward_texts_per_s"], 3)
        # out of scope: CLINC's out-of-scope test texts mixed with the in-scope ones, at the default
        # threshold (the top-level keys) and at other quantiles (the trade-off a user can choose)
        truth = [False] * len(texts) + [True] * len(oos_texts)
        sweep = []
        for quantile in (0.01, 0.02, 0.03, 0.05, 0.10):
            mixed = bank.predict(texts + oos_texts, ood_quantile=quantile)
            flagged = [p.label is None for p in mixed]
            tp = sum(f and t for f, t in zip(flagged, truth))
            precision, recall = tp / max(sum(flagged), 1), tp / len(oos_texts)
            sweep.append({"ood_quantile": quantile, "precision": round(precision, 4), "recall": round(recall, 4),
                          "f1": round(2 * precision * recall / max(precision + recall, 1e-9), 4),
                          "in_scope_rejected": round(sum(flagged[:len(texts)]) / len(texts), 4),
                          "in_scope_accuracy": round(sum(p.label == g for p, g in zip(mixed, gold)) / len(gold), 4)})
        out["oos_auroc"] = oos_auroc(bank, texts, oos_texts)
        at_default = next(row for row in sweep if row["ood_quantile"] == bank.registry.manifest["router"]["ood_quantile"])
        out["oos_precision"], out["oos_recall"], out["oos_f1"] = at_default["precision"], at_default["recall"], at_default["f1"]
        out["in_scope_accuracy_with_threshold"] = at_default["in_scope_accuracy"]
        out["oos_sweep"] = sweep
        joint_train = subset(train, every, "joint", per_label)
        out["joint_accuracy"], out["joint_train_seconds"] = joint_baseline(bank, joint_train, test_set, sorted(every))
        (out["cold_open_first_predict_s"], out["topk_ms_per_64"], out["topk_ms_per_64_mean"], out["cold_open_classes"],
         out["shortlist_agreement"], out["topk_ms_per_64_mahalanobis"]) = cold_open(workdir / "bank", "t00", cold_tasks, texts)
        out["cold_open_tasks"] = cold_tasks + n_tasks
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
