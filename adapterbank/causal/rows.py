"""Per-row model inputs for causal LMs: each row may carry its own soft prompt (a `prefix` kind's module).

PEFT runs one prompt-tuning module per model and cannot mix them in a batch. Here a row's soft prompt
is put before its token embeddings, rows without one (LoRA rows, base rows) get masked-out filler, and
position ids count only real positions, so every row computes exactly what it would alone, with PEFT's
semantics (prompt first, attended everywhere). The same inputs serve training, held-out loss and
batched generation (transformers' `generate` takes `inputs_embeds` and derives positions from the mask).
"""

from __future__ import annotations

from typing import Sequence

import torch


def row_inputs(model, input_ids: torch.Tensor, mask: torch.Tensor,
               prefixes: Sequence[torch.Tensor | None] | torch.Tensor | None = None) -> dict:
    """`inputs_embeds`, `attention_mask` and `position_ids` (real positions only: left padding and filler
    do not shift them) for `model`'s forward; `generate` derives the positions itself. `prefixes`: one [positions, hidden] tensor (or None) per row, or one [B, positions,
    hidden] tensor for every row (training a soft prompt)."""
    embeds = model.get_input_embeddings()(input_ids)
    if prefixes is None or (not isinstance(prefixes, torch.Tensor) and all(p is None for p in prefixes)):
        return {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
    rows, hidden = embeds.shape[0], embeds.shape[-1]
    if isinstance(prefixes, torch.Tensor):
        front, front_mask = prefixes.to(embeds.dtype), mask.new_ones(rows, prefixes.shape[1])
    else:
        width = max(p.shape[0] for p in prefixes if p is not None)
        front = embeds.new_zeros(rows, width, hidden)
        front_mask = mask.new_zeros(rows, width)
        for row, prefix in enumerate(prefixes):
            if prefix is not None:  # right-aligned against the tokens, as if the prompt were the first tokens
                front[row, width - prefix.shape[0]:] = prefix.to(embeds.dtype)
                front_mask[row, width - prefix.shape[0]:] = 1
    full_mask = torch.cat([front_mask, mask], dim=1)
    positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
    return {"inputs_embeds": torch.cat([front, embeds], dim=1), "attention_mask": full_mask, "position_ids": positions}


def runner_of(model, kind=None):
    """(the module that runs the forward, its soft prompt for a batch of n rows, or None): a `prefix`
    kind's PEFT model supplies its prompt and runs the bare LM; other kinds run the PEFT model itself."""
    if kind is not None and kind.batching == "prefix":
        return model.base_model, lambda rows: model.get_prompt(batch_size=rows)
    return model, lambda rows: None


def left_pad(token_ids: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad a batch (every row ends at the right edge, where responses and new tokens are)."""
    longest = max(len(ids) for ids in token_ids)
    input_ids = torch.full((len(token_ids), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_ids), longest), dtype=torch.long)
    for row, ids in enumerate(token_ids):
        if ids:
            input_ids[row, longest - len(ids):] = torch.tensor(ids, dtype=torch.long)
            mask[row, longest - len(ids):] = 1
    return input_ids.to(device), mask.to(device)
