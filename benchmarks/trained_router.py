"""Would a trained router beat the statistics router, and on what would it have to be trained? Validation only;
prints JSON.

    python benchmarks/trained_router.py [--seed 0] [--steps 3000]    # ~30 minutes on 2 CPU cores
    python benchmarks/trained_router.py --only mlp_joint --test       # the ceiling, also on test (~8 minutes)

The bank routes by class statistics of frozen features (routing/methods.py, `task-covariance`), and the issue's
rule is "statistics only": no training text and no per-example features in the bank. This asks what that rule
costs. On the router's own inputs (the L2-normalised mean pools of layers 3, 4 and 5, as router_layers.py
builds them) it trains a small classifier over every label of every task and reads task routing off its
probabilities (a task's share: the sum over its labels), on task_covariance.py's validation splits:

- `statistics`: today's router (kernel map, class statistics, `task-covariance`), for reference;
- `linear_joint`, `mlp_joint`: a linear layer / a one-hidden-layer MLP trained on every task's training
  features at once, what the rule forbids (a bank would have to keep them all);
- `mlp_statistics`: the MLP trained only on samples drawn from each label's Gaussian (its mean, its task's
  within-class covariance), statistics of the kind a bank stores (taken here in the pooled space, where a bank
  keeps them in the kernel map's), so a bank could rebuild it after any removal;
- `mlp_kept_K`: the MLP trained on K stored features a label (an exemplar memory of features, not texts),
  with and without the Gaussian samples; `bytes_per_task` is what they would add to each task's files (fp16).

The classifier (1,024 GELU units, dropout 0.2, AdamW 1e-3 decay, one-cycle to 2e-3, label smoothing 0.1,
`--steps` batches of 256) was set once before any run and not tuned: a probe of what each kind of training
data allows, not a router.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from adapterbank import AdapterBank  # noqa: E402
from adapterbank.routing.kernel import KernelMap  # noqa: E402
from adapterbank.routing.methods import shrunk  # noqa: E402
from router_layers import _pools  # noqa: E402
from task_covariance import splits  # noqa: E402
from task_covariance_router import _accuracy, _index  # noqa: E402

LAYERS = [3, 4, 5]
HIDDEN = 1024
SAMPLES_PER_LABEL = 200
KEPT = (10, 20)
BATCH = 256


def _train(features: torch.Tensor, targets: torch.Tensor, classes: int, hidden: int, steps: int, seed: int):
    torch.manual_seed(seed)
    width = features.shape[1]
    model = (torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.GELU(), torch.nn.Dropout(0.2),
                                 torch.nn.Linear(hidden, classes)) if hidden else torch.nn.Linear(width, classes))
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, 2e-3, total_steps=steps)
    for _ in range(steps):
        batch = torch.randint(len(features), (BATCH,))
        loss = torch.nn.functional.cross_entropy(model(features[batch]), targets[batch], label_smoothing=0.1)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    return model.eval()


def _gaussian_samples(x: torch.Tensor, y: torch.Tensor, owner: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """SAMPLES_PER_LABEL draws per label from N(label mean, its task's within-class covariance, shrunk as the
    router shrinks): only what a task's statistics hold."""
    means = torch.stack([x[y == c].mean(0) for c in range(len(owner))])
    residuals = x - means[y]
    drawn, labels = [], []
    for task in range(int(owner.max()) + 1):
        rows = owner[y] == task
        factor = torch.linalg.cholesky(shrunk(residuals[rows].T @ residuals[rows] / rows.sum()))
        mine = (owner == task).nonzero().squeeze(1).repeat_interleave(SAMPLES_PER_LABEL)
        drawn.append(means[mine] + torch.randn(len(mine), x.shape[1], generator=generator) @ factor.T)
        labels.append(mine)
    return torch.cat(drawn), torch.cat(labels)


def _kept(y: torch.Tensor, per_label: int, generator) -> torch.Tensor:
    return torch.cat([(y == c).nonzero().squeeze(1)[torch.randperm(int((y == c).sum()), generator=generator)[:per_label]]
                      for c in range(int(y.max()) + 1)])


def run(name: str, bank, seed: int, steps: int, only: set | None, test: bool) -> tuple[dict, dict]:
    """(validation row, test row: empty without `test`) for one dataset."""
    train_x, train_y, val_x, val_y, test_x, test_y, tasks = splits(name, seed)
    train, val = _pools(bank, train_x)[:, LAYERS].float(), _pools(bank, val_x)[:, LAYERS].float()
    labels = [label for task in tasks for label in task]
    position = {label: i for i, label in enumerate(labels)}
    owner = torch.tensor([k for k, task in enumerate(tasks) for _ in task])
    y, y_val = torch.tensor([position[t] for t in train_y]), torch.tensor([position[t] for t in val_y])
    sets = {"validation": (val, owner[y_val])}
    if test:  # reported, never used to choose anything: every setting here was fixed before any run
        sets["test"] = (_pools(bank, test_x)[:, LAYERS].float(), owner[torch.tensor([position[t] for t in test_y])])
    row: dict = {"texts": len(val_y), "labels": len(labels), "tasks": len(tasks)}
    on_test: dict = {"texts": len(test_y)} if test else {}

    kernel = KernelMap.for_features(train.shape[1] * train.shape[2], len(LAYERS))
    index = _index(kernel(train.flatten(1)), train_y, tasks, range(len(train_y)))
    for split, (pools, truth) in sets.items():
        (row if split == "validation" else on_test)["statistics"] = _accuracy(
            index.task_scores(kernel(pools.flatten(1)), "task-covariance").argmax(-1), truth)

    x = train.flatten(1)
    centre, spread = x.mean(0), x.std(0).clamp_min(1e-6)  # aggregate statistics, as a bank could store them
    x = (x - centre) / spread

    def routed(model, pools: torch.Tensor, truth: torch.Tensor) -> float:
        with torch.no_grad():
            probabilities = model((pools.flatten(1) - centre) / spread).softmax(-1)
        share = probabilities.new_zeros(len(pools), len(tasks)).index_add_(1, owner, probabilities)
        return _accuracy(share.argmax(-1), truth)

    generator = torch.Generator().manual_seed(seed)
    samples, sample_y = _gaussian_samples(x, y, owner, generator)
    per_task_label = len(labels) / len(tasks)
    plans = {"linear_joint": (x, y, 0), "mlp_joint": (x, y, HIDDEN), "mlp_statistics": (samples, sample_y, HIDDEN)}
    for k in KEPT:
        kept = _kept(y, k, generator)
        plans[f"mlp_kept_{k}"] = (x[kept], y[kept], HIDDEN)
        plans[f"mlp_kept_{k}_and_statistics"] = (torch.cat([x[kept], samples]), torch.cat([y[kept], sample_y]), HIDDEN)
        row[f"bytes_per_task_kept_{k}"] = int(k * per_task_label * x.shape[1] * 2)
    for key, (features, targets, hidden) in plans.items():
        if only and key not in only:
            continue
        began = time.perf_counter()
        model = _train(features, targets, len(labels), hidden, steps, seed)
        row[key] = routed(model, *sets["validation"])
        if test:
            on_test[key] = routed(model, *sets["test"])
        print(json.dumps({name: {key: row[key], "seconds": round(time.perf_counter() - began)}}), file=sys.stderr, flush=True)
    return row, on_test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--only", default="", help="comma-separated rows to train (default: all), e.g. mlp_joint")
    parser.add_argument("--test", action="store_true", help="also report each row on the test split")
    args = parser.parse_args()
    out: dict = {"seed": args.seed, "steps": args.steps, "layers": LAYERS, "hidden": HIDDEN,
                 "samples_per_label": SAMPLES_PER_LABEL, "validation": {}}
    with tempfile.TemporaryDirectory() as tmp:
        bank = AdapterBank.create(f"{tmp}/bank")
        for name in ("clinc150", "banking77"):
            out["validation"][name], on_test = run(name, bank, args.seed, args.steps,
                                                   set(filter(None, args.only.split(","))), args.test)
            if on_test:
                out.setdefault("test", {})[name] = on_test
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
