"""How a classification bank weighs the router's label posterior into its module's answer (DEFAULT_LABEL_WEIGHT),
chosen on validation only; and what else was tried with the modules' outputs. Prints JSON.

    python benchmarks/label_fusion.py [--seed 0] [--per-class 10]    # 76 minutes on 2 cores, beside other runs for half

Same splits as task_covariance.py: CLINC150's validation split (15 x 10 intents) and a fifth carved from Banking77's
training texts (7 x 11; the bank trained on the other four fifths), each bank made with add-task's defaults. For every
validation text it runs every task's module once (the lower pass shared, as predict shares it), then scores offline:
- `grid`: per label weight w, the routed accuracy (the bank's answer: the routed task's module label probabilities
  times the router's posterior over that task's labels to the power w) and the oracle accuracy (the true task's
  module, same product). w = 0 is the module alone. DEFAULT_LABEL_WEIGHT is the weight with the best mean routed
  accuracy over the four sets, these two and their `per_class` rows (grid_mean averages only two of them).
- `energy_routing`: re-choosing the task among the router's best 3 by its log-probability plus lambda times the
  candidate module's energy (logsumexp of its head's logits), the task-prediction idea of module-verified CIL
  methods; `energy_only` picks the task by energy alone. Task-routing accuracy.
- `confidence_vote`: re-choosing among the best 3 tasks by the router's log-probability divided by T plus the log of
  the candidate module's best label probability (the bank's answer at DEFAULT_LABEL_WEIGHT): whether a module is
  surer of its own task's texts. Routed accuracy; `confidence_on_errors` compares, on the texts the router sends
  to a wrong task, that task's module with the true task's module.
- `per_class`: the grid again for banks trained on at most N texts per label (`--per-class`, a seeded sample): whether
  the weight holds when the router's statistics and the modules come from few texts.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from adapterbank import AdapterBank  # noqa: E402
from adapterbank.classify.bank import _max_length  # noqa: E402
from adapterbank.core.encoding import collate, length_batches, pad_id_of, tokenize  # noqa: E402
from adapterbank.data import dataset_from_pairs  # noqa: E402
from adapterbank.routing.methods import DEFAULT_LABEL_WEIGHT  # noqa: E402
from task_covariance import capped, splits  # noqa: E402

WEIGHTS = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
ENERGY = (0.5, 1.0, 2.0, 5.0)
VOTE_TEMPERATURES = (1, 10, 100, 300, 1000, float("inf"))


def module_outputs(bank, texts: list[str]):
    """(router features [N, D], {task: head logits [N, c]}): every task's module on every text."""
    records = bank._records()
    model = bank._model()
    modules = {name: model.load(name, info.path, info.kind) for name, info in records.items() if info.kind}
    keep_from = model.first_layer([(info.record.get("config") or {}).get("depth") for info in records.values()])
    ids = tokenize(bank.base.tokenizer, texts, _max_length(records))
    features, logits = [None] * len(texts), {name: [None] * len(texts) for name in modules}
    with torch.no_grad():
        for batch in length_batches(ids, 64):
            input_ids, mask = collate([ids[i] for i in batch], pad_id_of(bank.base.tokenizer), bank.device)
            lower = model.lower(input_ids, mask, keep_from)
            rows = torch.arange(len(batch))
            for j, i in enumerate(batch):
                features[i] = lower.router_features[j].cpu().float()
            for name, module in modules.items():
                out = module.head.read(model.upper_features(lower, rows, [(module, rows, None)])).cpu().float()
                for j, i in enumerate(batch):
                    logits[name][i] = out[j]
    return torch.stack(features), {name: torch.stack(rows) for name, rows in logits.items()}


def evaluate(bank, texts: list[str], labels: list[str]) -> dict:
    records = bank._records()
    index = bank._index(records)
    method = bank.registry.manifest["router"]["method"]
    x, logits = module_outputs(bank, texts)
    names = index.task_names
    owner = {label: name for name, info in records.items() for label in info.labels}
    truth = torch.tensor([names.index(owner[y]) for y in labels])
    task_log_probs = index.task_scores(x, method)
    routed = task_log_probs.argmax(-1)
    module = {name: torch.log_softmax(logits[name], -1) for name in names}
    router = {name: index.label_scores(x, name, method) for name in names}
    gold = [records[owner[y]].labels.index(y) for y in labels]

    def accuracy(tasks: torch.Tensor, weight: float) -> float:
        right = 0
        for i, task in enumerate(tasks.tolist()):
            name = names[task]
            scores = module[name][i] + weight * router[name][i]
            right += name == owner[labels[i]] and int(scores.argmax()) == gold[i]
        return round(100 * right / len(labels), 2)

    out = {"texts": len(labels), "method": method, "routing_accuracy": round(100 * float((routed == truth).float().mean()), 2),
           "grid": [{"label_weight": w, "routed_accuracy": accuracy(routed, w), "oracle_accuracy": accuracy(truth, w)}
                    for w in WEIGHTS]}
    energy = torch.stack([logits[name].logsumexp(-1) for name in names], 1)
    top = task_log_probs.topk(min(3, len(names)), -1).indices
    outside = torch.full_like(task_log_probs, -float("inf")).scatter(1, top, 0.0)
    route_by = lambda s: round(100 * float((s.argmax(-1) == truth).float().mean()), 2)  # noqa: E731
    out["energy_routing"] = [{"lambda": lam, "routing_accuracy": route_by(task_log_probs + lam * energy + outside)}
                             for lam in ENERGY]
    out["energy_only"] = route_by(energy)
    fused = {name: torch.log_softmax(module[name] + DEFAULT_LABEL_WEIGHT * router[name], -1) for name in names}
    sure = torch.stack([fused[name].max(-1).values for name in names], 1)  # [N, T] log of each module's best label
    routed_at = lambda tasks: accuracy(tasks, DEFAULT_LABEL_WEIGHT)  # noqa: E731
    out["confidence_vote"] = [{"temperature": str(temp), "routed_accuracy": routed_at(
        ((task_log_probs / temp if temp != float("inf") else 0) + sure + outside).argmax(-1))} for temp in VOTE_TEMPERATURES]
    wrong = routed != truth
    mine, theirs = sure.gather(1, routed[:, None]).squeeze(1), sure.gather(1, truth[:, None]).squeeze(1)
    out["confidence_on_errors"] = {"texts": int(wrong.sum()),
                                   "routed_module_mean": round(float(mine[wrong].exp().mean()), 4),
                                   "true_module_mean": round(float(theirs[wrong].exp().mean()), 4),
                                   "true_module_surer": round(float((theirs[wrong] > mine[wrong]).float().mean()), 4)}
    return out


def make_bank(path: str, name: str, tasks, train_x, train_y, rows) -> AdapterBank:
    """A bank with add-task's defaults, one task per label list, trained on the training texts at `rows`."""
    bank = AdapterBank.create(path)
    for k, labels in enumerate(tasks):
        keep = set(labels)
        mine = [i for i in rows if train_y[i] in keep]
        bank.add_task(f"t{k:02d}", dataset_from_pairs([train_x[i] for i in mine], [train_y[i] for i in mine],
                                                      f"{name}-t{k}"), progress=False)
    return bank


def _mean(sets: list[dict]) -> list[dict]:
    return [{"label_weight": w, "routed_accuracy": round(sum(s["grid"][i]["routed_accuracy"] for s in sets) / len(sets), 3)}
            for i, w in enumerate(WEIGHTS)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", default="10", help="training texts per label for the few-text rows ('' for none)")
    args = parser.parse_args()
    caps = [int(n) for n in args.per_class.split(",") if n]
    out: dict = {"seed": args.seed, "default_label_weight": DEFAULT_LABEL_WEIGHT, "validation": {}, "per_class": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("clinc150", "banking77"):
            train_x, train_y, val_x, val_y, _, _, tasks = splits(name, args.seed)
            bank = make_bank(f"{tmp}/{name}", name, tasks, train_x, train_y, range(len(train_y)))
            out["validation"][name] = evaluate(bank, val_x, val_y)
            for cap in caps:
                kept = capped(train_y, cap, args.seed)
                few = make_bank(f"{tmp}/{name}-{cap}", name, tasks, train_x, train_y, kept)
                out["per_class"].setdefault(str(cap), {})[name] = evaluate(few, val_x, val_y)
    out["grid_mean"] = _mean(list(out["validation"].values()))
    for cap, sets in out["per_class"].items():
        out["per_class"][cap]["grid_mean"] = _mean(list(sets.values()))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
