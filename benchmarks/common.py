"""Helpers shared by the benchmark scripts (run as `python benchmarks/<script>.py`, so this imports as `common`)."""

from __future__ import annotations

from adapterbank import dataset_from_pairs


def subset(data, labels, source, per_label=None):
    """The examples of `labels`, in file order, at most `per_label` of each (all when None)."""
    keep, seen, texts, targets = set(labels), {}, [], []
    for text, label in zip(data.texts, data.targets):
        if label in keep and (per_label is None or seen.get(label, 0) < per_label):
            seen[label] = seen.get(label, 0) + 1
            texts.append(text)
            targets.append(label)
    return dataset_from_pairs(texts, targets, source=source)
