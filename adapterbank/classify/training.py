"""Training one task's module (LoRA or prompt) plus its head on the frozen base, with PEFT.

The base is deep-copied before PEFT wraps it, so the bank's own base never changes. Texts are
tokenized once and batched by length; the head starts at the class means of the untrained module's
features; the learning rate follows a one-cycle schedule.

LoRA on a split-capable encoder (backbone.py) trains only the upper layers: the frozen lower layers
run once per text, their states are kept (within `cache_bytes`) and reused by every epoch.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from peft import get_peft_model
from tqdm.auto import tqdm

from .. import faults
from ..kinds import kind_module, quiet_peft
from ..core.backbone import SplitEncoder
from ..core.encoding import collate, length_batches, mean_pool, pad_id_of
from .heads import CosineHead
from ..core.models import DEFAULT_MAX_LENGTH

HEAD_LR = 1e-2
DEFAULT_CACHE_BYTES = 2 << 30  # lower-layer states kept in memory for reuse across epochs


@dataclass
class TrainConfig:
    kind: str = "lora"
    rank: int = 8
    virtual_tokens: int = 16
    epochs: int | None = None  # None: enough epochs for ~MIN_STEPS optimizer steps (between 3 and 20)
    lr: float | None = None  # None: the kind's default
    batch_size: int = 32
    seed: int = 0
    max_length: int = DEFAULT_MAX_LENGTH

    MIN_STEPS = 120

    def resolved_epochs(self, n_examples: int) -> int:
        if self.epochs is not None:
            return self.epochs
        steps_per_epoch = -(-n_examples // self.batch_size)
        return max(3, min(20, -(-self.MIN_STEPS // steps_per_epoch)))

    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else kind_module(self.kind).DEFAULT_LR


@dataclass
class TrainedModule:
    peft_model: torch.nn.Module
    head: CosineHead
    hyperparameters: dict
    features: Callable[[Sequence[int]], torch.Tensor]  # training-text indices -> module features
    metrics: dict = field(default_factory=dict)


def module_features(peft_model, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean-pooled features of the real tokens through a PEFT model (soft-prompt positions dropped)."""
    hidden = peft_model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    virtual = hidden.shape[1] - input_ids.shape[1]
    return mean_pool(hidden[:, virtual:], mask)


def pad_states(states: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad per-text [len, H] states into [B, L, H] plus the 0/1 mask."""
    longest = max(s.shape[0] for s in states)
    hidden = states[0].new_zeros(len(states), longest, states[0].shape[1])
    mask = torch.zeros(len(states), longest, dtype=torch.long, device=states[0].device)
    for row, s in enumerate(states):
        hidden[row, : s.shape[0]] = s
        mask[row, : s.shape[0]] = 1
    return hidden, mask


class LowerStates:
    """One frozen lower pass over the training texts: the router's features of every text, and the
    states entering the upper layers, kept when they fit in `cache_bytes` (recomputed per batch
    otherwise: same result, slower). The lower layers carry no module, so the bank's base serves."""

    def __init__(self, split: SplitEncoder, tokenizer, token_ids: Sequence[Sequence[int]], device, cache_bytes: int):
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

    def _compute(self, batch: Sequence[int]) -> list[torch.Tensor]:
        input_ids, mask = collate([self.token_ids[i] for i in batch], self.pad, self.device)
        with torch.no_grad():
            hidden = self.split.lower(input_ids, mask).hidden
        return [hidden[row, : len(self.token_ids[i])].clone() for row, i in enumerate(batch)]

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        states = [self.cached[i] for i in indices] if self.cached is not None else self._compute(indices)
        return pad_states(states)


def train_classifier(
    base_model: torch.nn.Module,
    tokenizer,
    token_ids: Sequence[Sequence[int]],
    targets: Sequence[int],
    n_classes: int,
    config: TrainConfig,
    upper_layers: int | None = None,
    progress: bool = True,
    description: str = "training",
    lower_states: LowerStates | None = None,
    resume: TrainedModule | None = None,
) -> TrainedModule:
    """Fit a fresh module + cosine head; returns them with training metrics (loss, examples/s).

    `upper_layers`: for LoRA on a split-capable encoder, adapt only that many top layers.
    `lower_states`: the lower pass over `token_ids` if the caller already ran it (else run here).
    `resume`: keep training that module (same config) with its head grown to `n_classes`: the rows it
    has are kept, new classes start at their class means (sequential fine-tuning, a baseline).
    """
    kind = kind_module(config.kind)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    device = next(base_model.parameters()).device
    use_split = config.kind == "lora" and bool(upper_layers) and SplitEncoder.supports(base_model)
    layer_indices = SplitEncoder(base_model, upper_layers).upper_indices if use_split else None
    peft_config = kind.make_config(base_model, rank=config.rank, virtual_tokens=config.virtual_tokens,
                                   upper_layers=layer_indices)
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
    adapter_params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": adapter_params, "lr": lr, "weight_decay": 0.01},
         {"params": list(head.parameters()), "lr": HEAD_LR, "weight_decay": 0.0}]
    )
    steps_per_epoch = len(length_batches(token_ids, config.batch_size))
    total = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[lr, HEAD_LR], total_steps=total, pct_start=0.1)
    peft_model.train()
    started, seen, step, final_loss = time.perf_counter(), 0, 0, 0.0
    bar = tqdm(total=total, desc=description, unit="step", disable=not progress, leave=False)
    for epoch in range(epochs):
        epoch_loss = 0.0
        for batch in length_batches(token_ids, config.batch_size, rng):
            loss = torch.nn.functional.cross_entropy(head(features(batch)), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += len(batch)
            epoch_loss += loss.item() * len(batch)
            bar.update(1)
            step += 1
            faults.point(f"train-step-{step}")
            bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{loss.item():.3f}")
        final_loss = epoch_loss / len(token_ids)  # mean loss over the last epoch
    bar.close()
    elapsed = time.perf_counter() - started
    peft_model.eval()
    head.eval()
    hyper = {"kind": config.kind, "epochs": epochs, "lr": lr, "head_lr": HEAD_LR, "batch_size": config.batch_size,
             "seed": config.seed, "max_length": config.max_length, **kind.hyperparameters(peft_config)}
    metrics = {"train_loss": round(final_loss, 6), "train_seconds": round(elapsed, 3),
               "train_examples_per_s": round(seen / max(elapsed, 1e-9), 2)}
    return TrainedModule(peft_model, head, hyper, features, metrics)


@torch.no_grad()
def _initial_prototypes(peft_model, features, token_ids, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Class means of the untrained module's normalised features: the head starts as nearest-class-mean."""
    peft_model.eval()
    sums = None
    for batch in length_batches(token_ids, 128):
        f = torch.nn.functional.normalize(features(batch).float(), dim=-1)
        sums = (sums if sums is not None else f.new_zeros(n_classes, f.shape[1])).index_add_(0, labels[batch], f)
    return sums / torch.bincount(labels, minlength=n_classes).clamp_min(1).unsqueeze(1).to(sums)
