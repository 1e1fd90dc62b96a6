"""`adapterbank eval --online hard|blurry`: a seeded stream from a flat dataset, learned with `bank.learn`
and measured at regular points of the stream.

- hard: the labels are dealt into tasks (as `--scenario class` deals them); the tasks arrive one after
  another, each line naming its task.
- blurry (after Si-Blurry, Moon et al. 2023): a share of the labels (`BLURRY_SHARE`) is spread over the
  whole stream; the others arrive in the tasks' disjoint groups, whose edges overlap (`OVERLAP` of a
  group's span reaches into each neighbour's).
- At each of `points` evenly spaced positions, every test text of every label seen so far is predicted
  (routed, no out-of-scope refusal). A_auc is the mean of those accuracies (the area under the accuracy
  curve over examples seen, normalised); A_last is the accuracy after the stream, once `learn --flush`
  has turned what was pending into modules; forgetting is the mean over labels of their best accuracy
  at an earlier point minus their last.
- Baselines: `ncm` (online nearest class mean on the frozen base's mean-pooled embeddings, updated with
  every example: the same points) and `offline` (the class-incremental bank: add-task on each task's
  whole data, measured once at the end).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Sequence

from ..errors import DataError

MODES = ("hard", "blurry")
DEFAULT_POINTS = 10
BLURRY_SHARE = 0.1  # labels spread over the whole stream (Si-Blurry's "blurry" classes)
OVERLAP = 0.1  # share of a group's span that reaches into each neighbouring group's
ONLINE_BASELINES = ("ncm", "offline")


def build_stream(tasks, mode: str, seed: int) -> list[dict]:
    """The stream's lines ({"text", "label"} and, for hard boundaries, "task"), seeded."""
    rng = random.Random(f"online-{mode}-{seed}")
    if mode == "hard":
        stream = []
        for task in tasks:
            rows = [{"text": t, "label": y, "task": task.name} for t, y in zip(task.train.texts, task.train.targets)]
            rng.shuffle(rows)
            stream += rows
        return stream
    labels = sorted({label for task in tasks for label in task.labels})
    rng.shuffle(labels)
    spread = set(labels[:round(BLURRY_SHARE * len(labels))])
    keyed = []
    for k, task in enumerate(tasks):
        for text, label in zip(task.train.texts, task.train.targets):
            if label in spread:
                key = rng.random()
            else:  # within the group's span, widened by OVERLAP on each side
                key = (k - OVERLAP + rng.random() * (1 + 2 * OVERLAP)) / len(tasks)
            keyed.append((key, rng.random(), {"text": text, "label": label}))
    return [row for *_, row in sorted(keyed, key=lambda item: (item[0], item[1]))]


def run(data_dir: str | Path, out: str | Path, mode: str, base: str, kind: str, seed: int, n_tasks: int | None,
        points: int = DEFAULT_POINTS, baselines: Sequence[str] = ONLINE_BASELINES, device: str = "auto",
        progress: bool = False) -> dict:
    from .. import AdapterBank
    from ..store.files import ensure_new_dir
    from .scenarios import load_scenario

    if mode not in MODES:
        raise DataError(f"--online: one of {', '.join(MODES)}, got {mode!r}")
    if points < 1:
        raise DataError(f"points must be at least 1, got {points}")
    unknown = sorted(set(baselines) - set(ONLINE_BASELINES))
    if unknown:
        raise DataError(f"unknown online baseline(s) {', '.join(unknown)}; choose from: {', '.join(ONLINE_BASELINES)}")
    tasks = load_scenario(data_dir, "class", n_tasks=n_tasks, seed=seed)
    out = ensure_new_dir(out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    stream = build_stream(tasks, mode, seed)
    test_texts = [t for task in tasks for t in task.test.texts]
    test_labels = [y for task in tasks for y in task.test.targets]
    started = time.perf_counter()
    bank = AdapterBank.create(out / "bank", base=base, device=device)
    ncm = _OnlineNCM(bank, test_texts) if "ncm" in baselines else None
    marks = sorted({round(len(stream) * (i + 1) / points) for i in range(points)})
    curve, seen, position, learn_seconds, ingest_seconds = [], set(), 0, 0.0, 0.0
    for mark in marks:
        segment = stream[position:mark]
        clock = time.perf_counter()
        learned = bank.learn(segment, boundaries=mode, kind=kind, seed=seed, progress=False)
        learn_seconds += time.perf_counter() - clock
        ingest_seconds += learned.ingest_seconds
        if ncm is not None:
            ncm.update(segment)
        seen |= {row["label"] for row in segment}
        position = mark
        point = {"examples": mark, "labels_seen": len(seen), "tasks": len(bank.tasks())}
        point.update(_score(bank, test_texts, test_labels, seen))
        if ncm is not None:
            point["ncm"] = ncm.accuracy(test_labels, seen)
        curve.append(point)
        if progress:
            print(f"{mark}/{len(stream)} examples: bank {point['accuracy']:.3f}"
                  + (f", ncm {point['ncm']:.3f}" if ncm is not None else ""), flush=True)
    summary = bank.learn([], boundaries=mode, flush=True, kind=kind, seed=seed, progress=False)
    final = _score(bank, test_texts, test_labels, seen)
    results = {
        "mode": mode, "data": str(data_dir), "seed": seed, "kind": kind, "tasks": [t.name for t in tasks],
        "stream_examples": len(stream), "points": curve,
        "a_auc": round(sum(p["accuracy"] for p in curve) / len(curve), 4), "a_last": final["accuracy"],
        "forgetting": _forgetting(curve, final["per_label"]), "modules": len(bank.tasks()),
        "flushed_tasks": summary.tasks, "learn_seconds": round(learn_seconds, 1),
        "ingest_examples_per_s": round(len(stream) / max(ingest_seconds, 1e-9), 1),
    }
    if ncm is not None:
        results["ncm"] = {"a_auc": round(sum(p["ncm"] for p in curve) / len(curve), 4), "a_last": curve[-1]["ncm"]}
    if "offline" in baselines:
        offline = AdapterBank.create(out / "offline-bank", base=base, device=device)
        for task in tasks:
            offline.add_task(task.name, task.train, kind=kind, seed=seed, progress=False)
        results["offline"] = {"a_last": _score(offline, test_texts, test_labels, seen)["accuracy"]}
    results["seconds"] = round(time.perf_counter() - started, 1)
    for point in curve:
        point.pop("per_label")
    _write(results, out)
    return results


def _score(bank, texts: list[str], labels: list[str], seen: set[str]) -> dict:
    """Accuracy on the test texts of the labels seen so far, overall and per label."""
    rows = [i for i, label in enumerate(labels) if label in seen]
    if not rows:
        return {"accuracy": 0.0, "per_label": {}}
    answers = bank.predict([texts[i] for i in rows], ood_quantile=0)
    hits: dict[str, list[int]] = {}
    for i, answer in zip(rows, answers):
        hits.setdefault(labels[i], []).append(int(answer.label == labels[i]))
    correct = sum(sum(h) for h in hits.values())
    return {"accuracy": round(correct / len(rows), 4), "per_label": {k: sum(v) / len(v) for k, v in hits.items()}}


def _forgetting(curve: list[dict], last: dict[str, float]) -> float:
    best: dict[str, float] = {}
    for point in curve[:-1]:
        for label, accuracy in point["per_label"].items():
            best[label] = max(best.get(label, 0.0), accuracy)
    drops = [best[label] - last.get(label, 0.0) for label in best]
    return round(sum(drops) / len(drops), 4) if drops else 0.0


class _OnlineNCM:
    """Nearest class mean on the frozen base's mean-pooled, normalised embeddings, updated per example."""

    def __init__(self, bank, test_texts: list[str]):
        self.bank, self.sums, self.counts = bank, {}, {}
        self.test = self._embed(test_texts)

    def _embed(self, texts: list[str]):
        from ..core import DEFAULT_MAX_LENGTH
        from .baseline_models import frozen_embeddings

        return frozen_embeddings(self.bank.base, texts, DEFAULT_MAX_LENGTH, self.bank.device)

    def update(self, rows: list[dict]) -> None:
        if not rows:
            return
        for row, vector in zip(rows, self._embed([row["text"] for row in rows])):
            self.sums[row["label"]] = self.sums.get(row["label"], 0) + vector
            self.counts[row["label"]] = self.counts.get(row["label"], 0) + 1

    def accuracy(self, labels: list[str], seen: set[str]) -> float:
        import torch

        names = list(self.sums)
        means = torch.nn.functional.normalize(torch.stack([self.sums[n] for n in names]), dim=-1)
        rows = [i for i, label in enumerate(labels) if label in seen]
        predicted = (self.test[rows] @ means.T).argmax(-1).tolist()
        return round(sum(names[p] == labels[i] for p, i in zip(predicted, rows)) / max(len(rows), 1), 4)


def _write(results: dict, out: Path) -> None:
    """results.json, report.md and accuracy_curve.png (accuracy against examples seen)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    lines = [f"# Online learning ({results['mode']} boundaries)", "",
             "| method | A_auc | A_last |", "|---|---|---|",
             f"| bank (learn) | {results['a_auc']:.4f} | {results['a_last']:.4f} |"]
    if "ncm" in results:
        lines.append(f"| online NCM | {results['ncm']['a_auc']:.4f} | {results['ncm']['a_last']:.4f} |")
    if "offline" in results:
        lines.append(f"| offline bank (add-task per task) | - | {results['offline']['a_last']:.4f} |")
    lines += ["", f"Forgetting {results['forgetting']:.4f}; {results['modules']} modules; "
              f"{results['stream_examples']} examples; {results['seconds']} s.", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    figure, axes = plt.subplots(figsize=(6, 3.5))
    xs = [p["examples"] for p in results["points"]]
    axes.plot(xs, [p["accuracy"] for p in results["points"]], marker="o", label="bank (learn)")
    if "ncm" in results:
        axes.plot(xs, [p["ncm"] for p in results["points"]], marker="s", label="online NCM")
    axes.set_xlabel("examples seen")
    axes.set_ylabel("accuracy on the labels seen")
    axes.set_ylim(0, 1)
    axes.legend()
    figure.tight_layout()
    figure.savefig(out / "accuracy_curve.png", dpi=120)
    plt.close(figure)
