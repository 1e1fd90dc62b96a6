"""A task module's depth: the one asked for, the bank's, or (`depth="auto"`) the better of the bank's and
the base's full depth on a tenth of the task's own training texts.

Why: the top layer alone fits easy tasks (CLINC150's intents: 99.2 % with the task given) at a fraction of
the cost, but not hard ones (sst5, 5-way sentiment: 47.6 % against 50.1 % for a full-depth LoRA), and a user
adding a task cannot know which kind theirs is. The search trains both candidates on 90 % of the texts,
keeps the better on the other 10 % (the shallower on a tie: cheaper to train and to route), then add-task
trains the chosen depth on every text. It costs both trainings on top of the final one.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Sequence

import torch

from ..core.backbone import SplitEncoder, num_layers
from ..core.encoding import collate, length_batches, pad_id_of
from ..errors import AdapterBankError
from ..kinds import get_kind
from .config import AUTO_DEPTH, ClassificationConfig
from .training import TrainedModule, module_features, train_classifier

VALIDATION_SHARE = 0.1  # of each label's training texts, held out to choose the depth
MIN_VALIDATION_TEXTS = 50  # fewer held-out texts cannot tell the candidates apart: the bank's depth is kept


def resolve_depth(config: ClassificationConfig, base_model, bank_layers: int) -> int:
    """The top layers a task's module adapts: `config.depth`, else the bank's; checked against the kind and
    the base (a prompt module enters at the input, so it has no depth)."""
    if config.depth is None:
        return bank_layers
    if get_kind(config.kind).batching != "upper":
        raise AdapterBankError(f"depth applies to kinds that adapt layers; a {config.kind!r} module enters at the input")
    total = num_layers(base_model) if SplitEncoder.supports(base_model) else 0
    if config.depth == AUTO_DEPTH:  # the deepest candidate (an encoder that cannot split has none beyond the bank's)
        return max(total, bank_layers)
    if config.depth > total:
        raise AdapterBankError(f"depth {config.depth}: the base has {total} transformer layers")
    return config.depth


def settle_depth(config: ClassificationConfig, base, token_ids: Sequence[Sequence[int]], targets: Sequence[int],
                 bank_layers: int, progress: bool, name: str) -> tuple[ClassificationConfig, int, dict]:
    """(the config with its depth settled, that depth, what the search measured for the task's metrics).
    `targets`: each text's label index (every label of the task occurs)."""
    if config.depth != AUTO_DEPTH:
        return config, resolve_depth(config, base.model, bank_layers), {}
    candidates = sorted({bank_layers, resolve_depth(config, base.model, bank_layers)})
    n_classes = len(set(targets))
    train_rows, held_out = _carve(targets, config.seed)
    reason = ("the bank's depth is the base's full depth" if len(candidates) < 2 else
              "one label: no module to train" if n_classes < 2 else
              f"{len(held_out)} held-out texts, fewer than the {MIN_VALIDATION_TEXTS} it takes to choose"
              if len(held_out) < MIN_VALIDATION_TEXTS else None)
    if reason:
        return dataclasses.replace(config, depth=bank_layers), bank_layers, {"depth_search": {
            "held_out_texts": len(held_out), "chosen": bank_layers, "note": f"kept the bank's depth: {reason}"}}
    accuracy = {}
    for depth in candidates:
        trained = train_classifier(base.model, base.tokenizer, [token_ids[i] for i in train_rows],
                                   [targets[i] for i in train_rows], n_classes, dataclasses.replace(config, depth=depth),
                                   upper_layers=depth, progress=progress,
                                   description=f"add-task {name}: depth {depth} on 90 %")
        accuracy[depth] = _accuracy(trained, base.tokenizer, [token_ids[i] for i in held_out],
                                    [targets[i] for i in held_out])
        del trained
    chosen = max(candidates, key=lambda depth: (accuracy[depth], -depth))
    return dataclasses.replace(config, depth=chosen), chosen, {"depth_search": {
        "held_out_texts": len(held_out), "chosen": chosen,
        "held_out_accuracy": {str(depth): round(a, 4) for depth, a in accuracy.items()}}}


def _carve(targets: Sequence[int], seed: int) -> tuple[list[int], list[int]]:
    """(training rows, held-out rows): every label gives VALIDATION_SHARE of its texts (rounded down, so a
    label with fewer than 10 texts gives none), chosen by the task's seed."""
    rng = random.Random(seed)
    by_label: dict[int, list[int]] = {}
    for row, label in enumerate(targets):
        by_label.setdefault(label, []).append(row)
    held_out = []
    for rows in by_label.values():
        held_out += rng.sample(rows, int(len(rows) * VALIDATION_SHARE))
    kept = set(held_out)
    return [row for row in range(len(targets)) if row not in kept], sorted(held_out)


@torch.no_grad()
def _accuracy(trained: TrainedModule, tokenizer, token_ids: Sequence[Sequence[int]], targets: Sequence[int]) -> float:
    """The module's accuracy on texts it did not train on, through a full PEFT forward."""
    device = next(trained.head.parameters()).device
    labels, hits = torch.tensor(list(targets)), 0
    for batch in length_batches(token_ids, 64):
        input_ids, mask = collate([token_ids[i] for i in batch], pad_id_of(tokenizer), device)
        predicted = trained.head(module_features(trained.peft_model, input_ids, mask)).argmax(-1).cpu()
        hits += int((predicted == labels[batch]).sum())
    return hits / max(len(targets), 1)
