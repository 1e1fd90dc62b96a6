"""Helpers shared by the benchmark scripts (run as `python benchmarks/<script>.py`, so this imports as `common`)."""

from __future__ import annotations

from pathlib import Path

from adapterbank import dataset_from_pairs

DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"
TASK_COUNTS = {"clinc150": 15, "banking77": 7}  # tasks the labels are dealt into (10 and 11 intents a task)
DOMAIN_SEQUENCES = {"sentence_suite": ["mr", "cr", "mpqa"]}  # one label set (polarity) over three domains, in order


def subset(data, labels, source, per_label=None):
    """The examples of `labels`, in file order, at most `per_label` of each (all when None)."""
    keep, seen, texts, targets = set(labels), {}, [], []
    for text, label in zip(data.texts, data.targets):
        if label in keep and (per_label is None or seen.get(label, 0) < per_label):
            seen[label] = seen.get(label, 0) + 1
            texts.append(text)
            targets.append(label)
    return dataset_from_pairs(texts, targets, source=source)


def crowding(real):
    """A maker of synthetic class means placed among the real ones (`real`: [classes, dim]): each a real class
    mean moved in a random direction by the median distance between real classes, so a large synthetic bank
    crowds the real classes instead of sitting apart from them. `crowding(real)(n, generator)`: n means."""
    import torch

    spread = torch.cdist(real, real).median()  # once, not per synthetic task

    def means(per_task: int, generator):
        near = real[torch.randint(0, len(real), (per_task,), generator=generator)]
        offsets = torch.randn(per_task, real.shape[1], generator=generator)
        return near + torch.nn.functional.normalize(offsets, dim=-1) * spread

    return means
