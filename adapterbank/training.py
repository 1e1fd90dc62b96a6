"""Training one task's module (LoRA or prompt) plus its head on the frozen base, with PEFT.

The base is deep-copied before PEFT wraps it, so the bank's own base never changes. Texts are
tokenized once and batched by length; the head starts at the class prototypes; the learning rate
follows a one-cycle schedule.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from peft import get_peft_model
from tqdm.auto import tqdm

from .adapters import kind_module, quiet_peft
from .encoding import collate, length_batches, map_batches, mean_pool, pad_id_of
from .heads import CosineHead
from .models import DEFAULT_MAX_LENGTH

HEAD_LR = 1e-2


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
    metrics: dict = field(default_factory=dict)


def module_features(peft_model, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean-pooled features of the real tokens through a PEFT model (soft-prompt positions dropped)."""
    hidden = peft_model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    virtual = hidden.shape[1] - input_ids.shape[1]
    return mean_pool(hidden[:, virtual:], mask)


def train_classifier(
    base_model: torch.nn.Module,
    tokenizer,
    token_ids: Sequence[Sequence[int]],
    targets: Sequence[int],
    prototypes: torch.Tensor,
    config: TrainConfig,
    progress: bool = True,
    description: str = "training",
) -> TrainedModule:
    """Fit a fresh module + cosine head; returns them with training metrics (loss, examples/s)."""
    kind = kind_module(config.kind)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    device = next(base_model.parameters()).device
    peft_config = kind.make_config(base_model, rank=config.rank, virtual_tokens=config.virtual_tokens)
    with quiet_peft():
        peft_model = get_peft_model(copy.deepcopy(base_model), peft_config)
    head = CosineHead(prototypes).to(device)
    epochs, lr = config.resolved_epochs(len(token_ids)), config.resolved_lr()
    adapter_params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": adapter_params, "lr": lr, "weight_decay": 0.01},
         {"params": list(head.parameters()), "lr": HEAD_LR, "weight_decay": 0.0}]
    )
    steps_per_epoch = len(length_batches(token_ids, config.batch_size))
    total = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[lr, HEAD_LR], total_steps=total, pct_start=0.1)
    labels = torch.tensor(list(targets), device=device)
    pad = pad_id_of(tokenizer)
    peft_model.train()
    started, seen, final_loss = time.perf_counter(), 0, 0.0
    bar = tqdm(total=total, desc=description, unit="step", disable=not progress, leave=False)
    for epoch in range(epochs):
        epoch_loss = 0.0
        for batch in length_batches(token_ids, config.batch_size, rng):
            input_ids, mask = collate([token_ids[i] for i in batch], pad, device)
            logits = head(module_features(peft_model, input_ids, mask))
            loss = torch.nn.functional.cross_entropy(logits, labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += len(batch)
            epoch_loss += loss.item() * len(batch)
            bar.update(1)
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
    return TrainedModule(peft_model, head, hyper, metrics)


def classify(peft_model, head: CosineHead, tokenizer, token_ids: Sequence[Sequence[int]], batch_size: int = 64) -> torch.Tensor:
    """Class probabilities [N, C] for tokenized texts, in input order."""

    def probabilities(input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.softmax(head(module_features(peft_model, input_ids, mask)), dim=-1)

    return map_batches(probabilities, token_ids, tokenizer, next(peft_model.parameters()).device, batch_size)
