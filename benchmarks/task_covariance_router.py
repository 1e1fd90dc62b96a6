"""Validation: task-covariance through the real RouterIndex, with the second stage gated by first-stage confidence."""
import json, os, sys, time
sys.path.insert(0, "benchmarks")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
from adapterbank import AdapterBank
from adapterbank.routing import methods
from adapterbank.routing.index import RouterIndex
from adapterbank.routing.statistics import class_statistics
from task_covariance import splits
import tempfile
out = {}
with tempfile.TemporaryDirectory() as tmp:
    bank = AdapterBank.create(f"{tmp}/bank")
    for name in ("clinc150", "banking77"):
        cache = f"/tmp/s30/feat_{name}.pt"
        train_x, train_y, val_x, val_y, test_x, test_y, tasks = splits(name, 0)
        if os.path.exists(cache):
            F = torch.load(cache)
        else:
            F = {"train": bank.router_features(train_x), "val": bank.router_features(val_x)}
            torch.save(F, cache)
        index = RouterIndex.empty(F["train"].shape[1])
        for k, labels in enumerate(tasks):
            pos = {l: i for i, l in enumerate(labels)}
            rows = [i for i, y in enumerate(train_y) if y in pos]
            index.add(f"t{k}", f"id{k}", class_statistics(F["train"][rows], [pos[train_y[i]] for i in rows], len(labels)))
        owner = {l: k for k, labels in enumerate(tasks) for l in labels}
        truth = torch.tensor([owner[y] for y in val_y])
        x = F["val"].float()
        first = index.task_scores(x, "mahalanobis")
        second = index.task_scores(x, "task-covariance")
        conf = first.max(-1).values.exp()
        res = {"mahalanobis": (first.argmax(-1) == truth).float().mean().item(), "task-covariance": (second.argmax(-1) == truth).float().mean().item()}
        for gate in (0.9, 0.99, 0.999, 0.9999, 0.99999):
            use = conf < gate
            pred = torch.where(use, second.argmax(-1), first.argmax(-1))
            res[f"gate_{gate}"] = {"acc": (pred == truth).float().mean().item(), "refined_share": use.float().mean().item(),
                                   "flips_above": int(((second.argmax(-1) != first.argmax(-1)) & ~use).sum())}
        out[name] = res
        print(name, json.dumps(res), flush=True)
