"""Running stored modules at inference: one lower pass per batch, then every row through its own module.

LoRA modules live on the upper layers only (backbone.py). Instead of wrapping the base with PEFT and
switching adapters, the LoRA factors PEFT saved are applied by forward hooks on the upper layers'
linear modules, row by row: one upper pass serves a batch that mixes any number of tasks, and a row
can also mix several modules with weights (weight-level composition). Prompt modules run a full pass
with each row's own soft prompt prepended. Modules load lazily and are kept in an LRU cache.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..kinds import prompt as prompt_kind
from ..core.backbone import LowerPass, SplitEncoder
from ..core.encoding import mean_pool
from ..errors import BankError
from .heads import CosineHead

DEFAULT_CACHE_SIZE = 64
_PEFT_PREFIX = "base_model.model."


@dataclass
class LoadedModule:
    kind: str
    head: CosineHead
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # linear path -> (A, B*scale)
    prompt: torch.Tensor | None = None


def load_lora_factors(task_dir: Path, allowed_layers: set[int]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """PEFT's saved LoRA factors as {linear module path: (A [r, in], scale * B [out, r])}."""
    config = json.loads((task_dir / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("use_dora") or config.get("rank_pattern") or config.get("alpha_pattern"):
        raise BankError(f"{task_dir / 'adapter_config.json'}: DoRA and per-layer rank/alpha patterns are not supported")
    r = config["r"]
    scale = config["lora_alpha"] / (r ** 0.5 if config.get("use_rslora") else r)
    weights = load_file(str(task_dir / "adapter_model.safetensors"))
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, a in weights.items():
        if not key.endswith(".lora_A.weight"):
            continue
        path = key[len(_PEFT_PREFIX):] if key.startswith(_PEFT_PREFIX) else key
        path = path[: -len(".lora_A.weight")]
        parts = path.split(".")
        layer = int(parts[parts.index("layer") + 1]) if "layer" in parts else -1
        if layer not in allowed_layers:
            raise BankError(f"{task_dir}: module adapts {path}, outside the bank's upper layers {sorted(allowed_layers)}")
        factors[path] = (a.float(), weights[key.replace("lora_A", "lora_B")].float() * scale)
    return factors


class RoutedModel:
    """The bank's frozen base plus loaded modules; computes class probabilities for routed rows."""

    def __init__(self, base_model: torch.nn.Module, upper_layers: int, cache_size: int = DEFAULT_CACHE_SIZE):
        self.model = base_model
        self.split = SplitEncoder(base_model, upper_layers)
        self.device = next(base_model.parameters()).device
        self.cache_size = cache_size
        self.loaded: OrderedDict[str, LoadedModule] = OrderedDict()
        self._plan: list[tuple[LoadedModule, torch.Tensor, torch.Tensor | None]] | None = None
        self._hooks = []
        upper = set(self.split.upper_indices)
        for path, module in base_model.named_modules():
            parts = path.split(".")
            if isinstance(module, torch.nn.Linear) and "layer" in parts and int(parts[parts.index("layer") + 1]) in upper:
                self._hooks.append(module.register_forward_hook(self._lora_hook(path)))

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _lora_hook(self, path: str):
        def hook(_module, inputs, output):
            if not self._plan:
                return output
            x = inputs[0]
            for module, rows, weights in self._plan:
                factors = module.lora.get(path)
                if factors is None:
                    continue
                a, b = factors
                delta = (x[rows] @ a.T) @ b.T
                if weights is not None:
                    delta = delta * weights.view(-1, *([1] * (delta.dim() - 1)))
                output = output.index_add(0, rows, delta.to(output.dtype))
            return output
        return hook

    # -- modules --------------------------------------------------------------------------------
    def load(self, name: str, task_dir: Path, kind: str) -> LoadedModule:
        """The named task's module, from the LRU cache or from `task_dir`."""
        if name in self.loaded:
            self.loaded.move_to_end(name)
            return self.loaded[name]
        module = self.load_unnamed(task_dir, kind)
        self.loaded[name] = module
        while len(self.loaded) > self.cache_size:
            self.loaded.popitem(last=False)
        return module

    def load_unnamed(self, task_dir: Path, kind: str) -> LoadedModule:
        """A module read from `task_dir`, not cached (e.g. one still being staged)."""
        task_dir = Path(task_dir)
        head = CosineHead.load(task_dir).to(self.device)
        if kind == "lora":
            factors = load_lora_factors(task_dir, set(self.split.upper_indices))
            module = LoadedModule(kind, head, lora={k: (a.to(self.device), b.to(self.device)) for k, (a, b) in factors.items()})
        else:
            module = LoadedModule(kind, head, prompt=prompt_kind.load_prompt(task_dir).to(self.device))
        return module

    # -- passes ---------------------------------------------------------------------------------
    @torch.no_grad()
    def lower(self, input_ids: torch.Tensor, mask: torch.Tensor) -> LowerPass:
        return self.split.lower(input_ids, mask)

    @torch.no_grad()
    def lora_features(self, lower: LowerPass, rows: torch.Tensor, plan: list[tuple[LoadedModule, torch.Tensor, torch.Tensor | None]]) -> torch.Tensor:
        """Mean-pooled output of the upper layers for `rows` of the lower pass; `plan` says which
        module(s) act on which of those rows (positions within `rows`), with optional per-row weights."""
        hidden, mask = lower.hidden[rows], lower.mask[rows]
        self._plan = plan
        try:
            out = self.split.upper(hidden, mask)
        finally:
            self._plan = None
        return mean_pool(out, mask)

    @torch.no_grad()
    def prompt_features(self, modules: list[LoadedModule], input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Full pass with each row's own soft prompt (PEFT's semantics: prompt first, mask of ones)."""
        prompts = torch.stack([m.prompt for m in modules])
        hidden = prompt_kind.encode_with_prompts(self.model, prompts, input_ids, mask)
        return mean_pool(hidden, mask)
