"""Running stored task modules at inference: lazy loading and one forward pass per task group.

LoRA modules are loaded as named adapters on one PEFT-wrapped copy of the base and switched with
`set_adapter`; prompt modules are applied directly (see adapters/prompt.py). The router's frozen
pass runs with all adapters disabled.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel

from .adapters import prompt as prompt_kind
from .adapters import quiet_peft
from .encoding import mean_pool
from .heads import CosineHead


@dataclass
class LoadedModule:
    kind: str
    head: CosineHead
    prompt: torch.Tensor | None = None


class ModuleRunner:
    """Owns a private copy of the base (LoRA layers get injected into it) and the loaded modules."""

    def __init__(self, base_model: torch.nn.Module):
        self.model = copy.deepcopy(base_model)
        self.device = next(self.model.parameters()).device
        self.peft: PeftModel | None = None
        self.loaded: dict[str, LoadedModule] = {}

    def load(self, name: str, task_dir: Path, kind: str) -> LoadedModule:
        if name in self.loaded:
            return self.loaded[name]
        head = CosineHead.load(task_dir).to(self.device)
        if kind == "lora":
            with quiet_peft():
                if self.peft is None:
                    self.peft = PeftModel.from_pretrained(self.model, str(task_dir), adapter_name=name)
                else:
                    self.peft.load_adapter(str(task_dir), adapter_name=name)
            self.peft.eval()
            module = LoadedModule(kind, head)
        else:
            module = LoadedModule(kind, head, prompt_kind.load_prompt(task_dir).to(self.device))
        self.loaded[name] = module
        return module

    def _adapters_off(self):
        return self.peft.disable_adapter() if self.peft is not None else contextlib.nullcontext()

    @torch.no_grad()
    def frozen_features(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with self._adapters_off():
            hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        return mean_pool(hidden, mask)

    @torch.no_grad()
    def class_probabilities(self, name: str, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        module = self.loaded[name]
        if module.kind == "lora":
            self.peft.set_adapter(name)
            hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        else:
            with self._adapters_off():
                hidden = prompt_kind.encode_with_prompt(self.model, module.prompt, input_ids, mask)
        return torch.softmax(module.head(mean_pool(hidden, mask)), dim=-1)

