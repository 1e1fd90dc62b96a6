"""A task module's depth: the one asked for, or (the default, `depth="auto"`) the bank's unless the base's
full depth beats it by more than a point on a tenth of the task's own training texts.

Why: the top layer alone fits easy tasks (CLINC150's intents: 99.2 % with the task given) at a fraction of
the cost, but not hard ones (sst5, 5-way sentiment: 47.6 % against 50.1 % for a full-depth LoRA), and a user
adding a task cannot know which kind theirs is. The search trains the bank-depth module on 90 % of the texts
(on the lower pass add-task runs anyway) and measures it on the other 10 %. Where it misses more than a point
there, a full-depth module is trained on the same 90 % and kept only if it wins by more than a point: a deep
module costs 2-3x add-task and slows every routed batch that reaches it, so a smaller gain is not worth it.
Then add-task trains the chosen depth on every text. An easy task pays one top-layer training extra.

Why the candidates train on all of the 90 %, though on a large task the deep one costs as much as add-task:
a capped sample (2,000 or 4,000 texts, the same for both candidates) was measured and moved the choice both
ways, since a deep module's lead depends on how many texts it sees. On held-out texts, full-depth minus
top-layer accuracy: CLINC150's 150 intents +0.8 on all 13,500 texts but +1.5 / +1.1 on about 2,000 / 4,000 (deep
chosen at both), sst5 +2.0 on all but +0.6 on 4,000 (depth lost); mr and trec kept their depth.
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
from .training import LowerStates, TrainedModule, module_features, train_classifier

VALIDATION_SHARE = 0.1  # of each label's training texts, held out to choose the depth
MIN_VALIDATION_TEXTS = 50  # fewer held-out texts cannot tell the candidates apart: the bank's depth is kept
MIN_GAIN = 0.01  # held-out accuracy a deeper module must add (strictly more) to be kept: its cost is 2-3x
_EPS = 1e-9  # accuracies are ratios of counts: compare them without float residue


def resolve_depth(config: ClassificationConfig, base_model, bank_layers: int) -> int:
    """The top layers a task's module adapts: `config.depth`, else the bank's; checked against the kind and
    the base (a prompt module enters at the input, so it has no depth). For AUTO_DEPTH: the deepest candidate."""
    if config.depth is None:
        return bank_layers
    if get_kind(config.kind).batching != "upper":
        raise AdapterBankError(f"depth applies to kinds that adapt layers; a {config.kind!r} module enters at the input")
    total = num_layers(base_model) if SplitEncoder.supports(base_model) else 0
    if config.depth == AUTO_DEPTH:  # an encoder that cannot split has no candidate beyond the bank's
        return max(total, bank_layers)
    if config.depth > total:
        raise AdapterBankError(f"depth {config.depth}: the base has {total} transformer layers")
    return config.depth


def _searches(config: ClassificationConfig) -> bool:
    """Whether add-task chooses the depth: asked for (`auto`), or by default for a kind that adapts layers."""
    return config.depth == AUTO_DEPTH or (config.depth is None and get_kind(config.kind).batching == "upper")


def settle_depth(config: ClassificationConfig, base, token_ids: Sequence[Sequence[int]], targets: Sequence[int],
                 bank_layers: int, progress: bool, name: str,
                 lower: LowerStates | None = None) -> tuple[ClassificationConfig, int, dict]:
    """(the config with its depth settled, that depth, what the search measured for the task's metrics).
    `targets`: each text's label index (every label of the task occurs). `lower`: the bank's lower pass over
    `token_ids`, reused by the bank-depth candidate."""
    if not _searches(config):
        return config, resolve_depth(config, base.model, bank_layers), {}
    deep = resolve_depth(dataclasses.replace(config, depth=AUTO_DEPTH), base.model, bank_layers)
    n_classes = len(set(targets))
    train_rows, held_out = _carve(targets, config.seed)
    reason = ("the base has no layers beyond the bank's to adapt" if deep <= bank_layers else
              "one label: no module to train" if n_classes < 2 else
              f"{len(held_out)} held-out texts, fewer than the {MIN_VALIDATION_TEXTS} it takes to choose"
              if len(held_out) < MIN_VALIDATION_TEXTS else None)
    if reason:
        return _settled(config, bank_layers, {"held_out_texts": len(held_out), "note": f"kept the bank's depth: {reason}"})

    def measure(depth: int, states: LowerStates | None) -> float:
        trained = train_classifier(base.model, base.tokenizer, [token_ids[i] for i in train_rows],
                                   [targets[i] for i in train_rows], n_classes, dataclasses.replace(config, depth=depth),
                                   upper_layers=depth, progress=progress, lower_states=states,
                                   description=f"add-task {name}: depth {depth} on 90 %")
        return _accuracy(trained, base.tokenizer, [token_ids[i] for i in held_out], [targets[i] for i in held_out])

    accuracy = {bank_layers: measure(bank_layers, lower.subset(train_rows) if lower is not None else None)}
    search = {"held_out_texts": len(held_out), "held_out_accuracy": accuracy}
    if 1 - accuracy[bank_layers] <= MIN_GAIN + _EPS:
        search["note"] = (f"depth {bank_layers} misses at most {MIN_GAIN * 100:g} % of the held-out texts: "
                          "a deeper module cannot win by more than that")
        return _settled(config, bank_layers, search)
    accuracy[deep] = measure(deep, None)
    return _settled(config, deep if accuracy[deep] - accuracy[bank_layers] > MIN_GAIN + _EPS else bank_layers, search)


def _settled(config: ClassificationConfig, depth: int, search: dict) -> tuple[ClassificationConfig, int, dict]:
    if "held_out_accuracy" in search:
        search["held_out_accuracy"] = {str(d): round(a, 4) for d, a in search["held_out_accuracy"].items()}
    return dataclasses.replace(config, depth=depth), depth, {"depth_search": {**search, "chosen": depth}}


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
