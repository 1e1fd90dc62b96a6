"""Training one classification task's module plus its head on the frozen base, with PEFT.

The base is deep-copied before PEFT wraps it, so the bank's own base never changes. Texts are
tokenized once and batched by length; the head starts at the class means of the untrained module's
features; the steps run on the one training loop (core/loop.py).

Kinds batched on the upper layers (kinds/base.py), on a split-capable encoder (core/backbone.py),
train only those layers: the frozen lower layers run once per text, their states are kept (within
`cache_bytes`) and reused by every epoch.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from peft import get_peft_model

from ..core import loop
from ..core.backbone import SplitEncoder
from ..core.encoding import collate, length_batches, mean_pool, pad_id_of, pad_states
from ..kinds import get_kind, quiet_peft
from .config import HEAD_LR, ClassificationConfig
from .heads import CosineHead

DEFAULT_CACHE_BYTES = 2 << 30  # lower-layer states kept in memory for reuse across epochs


@dataclass
class TrainedModule:
    peft_model: torch.nn.Module
    head: CosineHead
    hyperparameters: dict
    metrics: dict = field(default_factory=dict)


def module_features(peft_model, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean-pooled features of the real tokens through a PEFT model (soft-prompt positions dropped)."""
    hidden = peft_model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    virtual = hidden.shape[1] - input_ids.shape[1]
    return mean_pool(hidden[:, virtual:], mask)


class LowerStates:
    """The frozen lower pass over a task's texts: router features for every text, and the hidden
    states entering the upper layers, kept in memory when they fit within `cache_bytes` (else recomputed)."""

    def __init__(self, split: SplitEncoder, tokenizer, token_ids: Sequence[Sequence[int]], device: torch.device,
                 cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.split, self.token_ids, self.device, self.pad = split, token_ids, device, pad_id_of(tokenizer)
        keep = sum(len(t) for t in token_ids) * split.model.config.hidden_size * 4 <= cache_bytes
        self.cached: list[torch.Tensor] | None = [None] * len(token_ids) if keep else None  # type: ignore[list-item]
        features: list[torch.Tensor | None] = [None] * len(token_ids)
        with torch.no_grad():
            for batch in length_batches(token_ids, 128):
                input_ids, mask = collate([token_ids[i] for i in batch], self.pad, device)
                lower = split.lower(input_ids, mask)
                for row, index in enumerate(batch):
                    features[index] = lower.router_features[row].cpu()
                    if self.cached is not None:
                        self.cached[index] = lower.hidden[row, : len(token_ids[index])].clone()
        self.router_features = torch.stack(features)

    def subset(self, rows: Sequence[int]) -> "LowerStates":
        """The same pass over `rows` only, sharing its tensors: training on part of the texts runs nothing again."""
        view = copy.copy(self)
        view.token_ids = [self.token_ids[r] for r in rows]
        view.cached = [self.cached[r] for r in rows] if self.cached is not None else None
        view.router_features = self.router_features[list(rows)]
        return view

    def _compute(self, batch: Sequence[int]) -> list[torch.Tensor]:
        input_ids, mask = collate([self.token_ids[i] for i in batch], self.pad, self.device)
        with torch.no_grad():
            hidden = self.split.lower(input_ids, mask).hidden
        return [hidden[row, : len(self.token_ids[i])].clone() for row, i in enumerate(batch)]

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        states = [self.cached[i] for i in indices] if self.cached is not None else self._compute(indices)
        return pad_states(states)


def trains_on_upper(config: ClassificationConfig, base_model, upper_layers: int | None) -> bool:
    """Whether training runs on the upper layers over cached lower states (see the module docstring)."""
    return get_kind(config.kind).batching == "upper" and bool(upper_layers) and SplitEncoder.supports(base_model)


def train_classifier(
    base_model: torch.nn.Module,
    tokenizer,
    token_ids: Sequence[Sequence[int]],
    targets: Sequence[int],
    n_classes: int,
    config: ClassificationConfig,
    upper_layers: int | None = None,
    progress: bool = True,
    description: str = "training",
    lower_states: LowerStates | None = None,
    resume: TrainedModule | None = None,
    penalty: Callable[[torch.nn.Module, torch.nn.Module], torch.Tensor] | None = None,
) -> TrainedModule:
    """Fit a fresh module + cosine head; returns them with training metrics (loss, examples/s).

    `upper_layers`: for kinds batched on the upper layers, on a split-capable encoder, adapt only that
    many top layers. `lower_states`: the lower pass over `token_ids` if the caller already ran it.
    `resume`: keep training that module (same config) with its head grown to `n_classes`: the rows it
    has are kept, new classes start at their class means (sequential fine-tuning, a baseline).
    `penalty(peft_model, head)`: a term added to every step's loss (EWC, a baseline).
    """
    kind = get_kind(config.kind)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    device = next(base_model.parameters()).device
    use_split = trains_on_upper(config, base_model, upper_layers)
    layer_indices = SplitEncoder(base_model, upper_layers).upper_indices if use_split else None
    peft_config = kind.peft_config(base_model, config.params, layers=layer_indices)
    if resume is not None:
        peft_model = resume.peft_model
    else:
        with quiet_peft():
            peft_model = get_peft_model(copy.deepcopy(base_model), peft_config)
    pad = pad_id_of(tokenizer)
    if use_split:
        split = SplitEncoder(peft_model.base_model.model, upper_layers)
        lower = lower_states or LowerStates(split, tokenizer, token_ids, device, DEFAULT_CACHE_BYTES)

        def features(indices: Sequence[int]) -> torch.Tensor:
            hidden, mask = lower.batch(indices)
            return mean_pool(split.upper(hidden, mask), mask)
    else:
        def features(indices: Sequence[int]) -> torch.Tensor:
            input_ids, mask = collate([token_ids[i] for i in indices], pad, device)
            return module_features(peft_model, input_ids, mask)

    labels = torch.tensor(list(targets), device=device)
    head = CosineHead(_initial_prototypes(peft_model, features, token_ids, labels, n_classes)).to(device)
    if resume is not None:
        with torch.no_grad():
            known = resume.head.weight.shape[0]
            head.weight[:known] = resume.head.weight
            head.bias[:known] = resume.head.bias
            head.scale.copy_(resume.head.scale)
    epochs, lr = config.resolved_epochs(len(token_ids)), config.resolved_lr()
    steps_per_epoch = len(length_batches(token_ids, config.batch_size))

    def batches():
        for epoch in range(epochs):
            for batch in length_batches(token_ids, config.batch_size, rng):
                yield epoch, batch

    def step_loss(item):
        epoch, batch = item
        loss = torch.nn.functional.cross_entropy(head(features(batch)), labels[batch])
        if penalty is not None:
            loss = loss + penalty(peft_model, head)
        return loss, len(batch), {"epoch": f"{epoch + 1}/{epochs}"}

    groups = [{"params": [p for p in peft_model.parameters() if p.requires_grad], "lr": lr, "weight_decay": 0.01},
              {"params": list(head.parameters()), "lr": HEAD_LR, "weight_decay": 0.0}]
    total = epochs * steps_per_epoch
    peft_model.train()
    run = loop.train(groups, batches(), step_loss, total,
                     hooks=[loop.ProgressBar(total, description, progress), loop.KillPoints()])
    peft_model.eval()
    head.eval()
    last = slice(len(run.losses) - steps_per_epoch, None)  # mean loss over the last epoch
    final_loss = sum(l * n for l, n in zip(run.losses[last], run.sizes[last])) / len(token_ids)
    hyper = {"kind": config.kind, "epochs": epochs, "lr": lr, "head_lr": HEAD_LR, "batch_size": config.batch_size,
             "seed": config.seed, "max_length": config.max_length, **kind.hyperparameters(peft_config)}
    metrics = {"train_loss": round(final_loss, 6), "train_steps": run.steps, "train_seconds": round(run.seconds, 3),
               "train_examples_per_s": round(sum(run.sizes) / max(run.seconds, 1e-9), 2)}
    return TrainedModule(peft_model, head, hyper, metrics)


@torch.no_grad()
def _initial_prototypes(peft_model, features, token_ids, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Class means of the untrained module's normalised features: the head starts as nearest-class-mean."""
    peft_model.eval()
    sums = None
    for batch in length_batches(token_ids, 128):
        f = torch.nn.functional.normalize(features(batch).float(), dim=-1)
        sums = (sums if sums is not None else f.new_zeros(n_classes, f.shape[1])).index_add_(0, labels[batch], f)
    return sums / torch.bincount(labels, minlength=n_classes).clamp_min(1).unsqueeze(1).to(sums)
