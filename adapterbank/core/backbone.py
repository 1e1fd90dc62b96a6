"""The frozen base cut in two: lower layers run once per text, upper layers run per module.

Modules (LoRA) sit only on the top `upper_layers` transformer layers. So one frozen pass through the
lower layers serves three purposes: its intermediate states are the router's features, they are the
input of every module's upper layers at inference, and during training they are computed once and
reused across epochs. A routed prediction therefore costs about one base forward, not two.

Supported: BERT-like encoders (`model.embeddings` + `model.encoder.layer`). Other bases fall back to
whole-model passes (`SplitEncoder.supports` tells which).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .encoding import mean_pool

DEFAULT_UPPER_LAYERS = 1  # modules adapt the last layer only: see README "Where modules sit"
ROUTER_DEPTH = 3  # the router reads the mean-pooled states of the last 3 frozen layers below the split


@dataclass
class LowerPass:
    hidden: torch.Tensor  # [B, L, H] states entering the first upper layer
    mask: torch.Tensor  # [B, L] the 0/1 attention mask
    router_features: torch.Tensor  # [B, ROUTER_DEPTH * H], each layer's mean pool L2-normalised (then mapped)
    earlier: dict[int, torch.Tensor] = field(default_factory=dict)  # layer index -> states entering it (deep modules)

    def entering(self, layer: int, split: int) -> torch.Tensor:
        """States entering `layer` (the split point, or an earlier layer the pass was asked to keep)."""
        return self.hidden if layer == split else self.earlier[layer]


def num_layers(model: torch.nn.Module) -> int:
    return len(model.encoder.layer)


class SplitEncoder:
    """Runs `model` as lower (frozen, shared) and upper (per-module) halves; results equal a full pass."""

    def __init__(self, model: torch.nn.Module, upper_layers: int = DEFAULT_UPPER_LAYERS, router_map=None):
        total = num_layers(model)
        if not 1 <= upper_layers <= total:
            raise ValueError(f"upper_layers must be between 1 and {total}, got {upper_layers}")
        self.model = model
        self.split = total - upper_layers
        self.router_layers = list(range(max(0, self.split - ROUTER_DEPTH + 1), self.split + 1))
        self.router_map = router_map  # features -> the router's space (routing/kernel.py), or None: as pooled

    @staticmethod
    def supports(model: torch.nn.Module) -> bool:
        encoder = getattr(model, "encoder", None)
        return (hasattr(model, "embeddings") and hasattr(encoder, "layer")
                and not getattr(model.config, "is_decoder", False) and num_layers(model) >= 2)

    @property
    def upper_indices(self) -> list[int]:
        return list(range(self.split, num_layers(self.model)))

    def attention_mask(self, mask: torch.Tensor, hidden: torch.Tensor):
        from transformers.masking_utils import create_bidirectional_mask

        return create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden, attention_mask=mask)

    def lower(self, input_ids: torch.Tensor, mask: torch.Tensor, keep_from: int | None = None) -> LowerPass:
        """The frozen pass up to the split; `keep_from`: also keep the states entering each layer from that
        one on (what modules deeper than the split start from)."""
        hidden = self.model.embeddings(input_ids=input_ids)
        prepared = self.attention_mask(mask, hidden)
        pooled = [hidden] if 0 in self.router_layers else []
        earlier = {0: hidden} if keep_from == 0 else {}
        for index, layer in enumerate(self.model.encoder.layer[: self.split], start=1):
            hidden = layer(hidden, prepared)
            if index in self.router_layers:
                pooled.append(hidden)
            if keep_from is not None and keep_from <= index < self.split:
                earlier[index] = hidden
        features = torch.cat([torch.nn.functional.normalize(mean_pool(h, mask).float(), dim=-1) for h in pooled], -1)
        return LowerPass(hidden, mask, features if self.router_map is None else self.router_map(features), earlier)

    def upper(self, hidden: torch.Tensor, mask: torch.Tensor, start: int | None = None) -> torch.Tensor:
        """Last hidden state from the split point (or from layer `start`) on, with whatever module hooks are
        active."""
        prepared = self.attention_mask(mask, hidden)
        for layer in self.model.encoder.layer[self.split if start is None else start:]:
            hidden = layer(hidden, prepared)
        return hidden
