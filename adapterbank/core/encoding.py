"""Tokenize once, batch by length, pool: the shared plumbing of training, routing and inference."""

from __future__ import annotations

import random
from typing import Callable, Sequence

import torch

from . import DEFAULT_MAX_LENGTH


def tokenize(tokenizer, texts: Sequence[str], max_length: int = DEFAULT_MAX_LENGTH) -> list[list[int]]:
    """Token ids per text, truncated, unpadded (padding happens per batch, to that batch's longest)."""
    return tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)["input_ids"]


def length_batches(token_ids: Sequence[Sequence[int]], batch_size: int, rng: random.Random | None = None) -> list[list[int]]:
    """Indices grouped into batches of similar length (little padding).

    With `rng` (training), texts of equal length are shuffled before grouping and the batch order is
    shuffled, so each epoch sees different batches; without it the grouping is deterministic.
    """
    tie_break = [rng.random() for _ in token_ids] if rng is not None else range(len(token_ids))
    order = sorted(range(len(token_ids)), key=lambda i: (len(token_ids[i]), tie_break[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if rng is not None:
        rng.shuffle(batches)
    return batches


def collate(token_ids: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a batch to its longest sequence; returns (input_ids, attention_mask)."""
    longest = max(len(ids) for ids in token_ids)
    input_ids = torch.full((len(token_ids), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_ids), longest), dtype=torch.long)
    for row, ids in enumerate(token_ids):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, : len(ids)] = 1
    return input_ids.to(device), mask.to(device)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of token states where mask is 1 (sentence-transformers' mean pooling)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)


def pad_id_of(tokenizer) -> int:
    """The padding id: the tokenizer's pad token, else its EOS (causal LMs often have no pad), else 0.
    Padded positions are masked out, so the choice only has to be a valid id."""
    for candidate in (tokenizer.pad_token_id, getattr(tokenizer, "eos_token_id", None)):
        if candidate is not None:
            return candidate
    return 0


def pad_states(states: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad per-text [len, H] states into [B, L, H] plus the 0/1 mask."""
    longest = max(s.shape[0] for s in states)
    hidden = states[0].new_zeros(len(states), longest, states[0].shape[1])
    mask = torch.zeros(len(states), longest, dtype=torch.long, device=states[0].device)
    for row, s in enumerate(states):
        hidden[row, : s.shape[0]] = s
        mask[row, : s.shape[0]] = 1
    return hidden, mask


@torch.no_grad()
def map_batches(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], token_ids: Sequence[Sequence[int]],
                tokenizer, device: torch.device, batch_size: int = 64) -> torch.Tensor:
    """Apply `fn(input_ids, mask) -> [batch, D]` over length-grouped batches; rows back in input order, on CPU."""
    rows: list[torch.Tensor | None] = [None] * len(token_ids)
    for batch in length_batches(token_ids, batch_size):
        input_ids, mask = collate([token_ids[i] for i in batch], pad_id_of(tokenizer), device)
        for index, row in zip(batch, fn(input_ids, mask).cpu()):
            rows[index] = row
    return torch.stack(rows)
