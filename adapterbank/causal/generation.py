"""Routed generation on a causal-LM bank: each prompt runs with the module of its domain, in mixed batches.

Rows of one batch may use different modules: PEFT's mixed-adapter inference (`adapter_names`) applies
each row's LoRA, and `__base__` rows run the bare base. A module runs on the base version it was
trained on (modules are pinned to their version: see README "Base versions"), so prompts are grouped
by base version first and each version keeps its own PEFT model.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..kinds import quiet_peft
from ..core.encoding import pad_id_of

BASE_ROW = "__base__"  # PEFT's name for "no adapter" in a mixed batch


class VersionGenerator:
    """One base version wrapped by PEFT, with the modules used so far loaded as named adapters."""

    def __init__(self, base_model: torch.nn.Module, tokenizer):
        self.base_model = copy.deepcopy(base_model)  # PEFT injects its layers: the bank's base stays bare
        self.tokenizer = tokenizer
        self.peft_model = None
        self.loaded: set[str] = set()

    def _ensure(self, name: str, directory: Path) -> None:
        from peft import PeftModel

        if name in self.loaded:
            return
        with quiet_peft():
            if self.peft_model is None:
                self.peft_model = PeftModel.from_pretrained(self.base_model, str(directory), adapter_name=name)
            else:
                self.peft_model.load_adapter(str(directory), adapter_name=name)
        self.peft_model.eval()
        self.loaded.add(name)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], modules: Sequence[str | None], directories: dict[str, Path],
                 batch_size: int, options: dict, check: Callable[[str], None] | None = None,
                 progress: bool = False) -> list[str]:
        from tqdm.auto import tqdm

        for name in dict.fromkeys(m for m in modules if m is not None):
            if name not in self.loaded and check is not None:
                check(name)
            self._ensure(name, directories[name])
        model = self.peft_model if self.peft_model is not None else self.base_model
        tokenizer = self.tokenizer
        side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation continues from the right edge
        pad = pad_id_of(tokenizer)
        device = next(model.parameters()).device
        outputs: list[str] = []
        try:
            for start in tqdm(range(0, len(prompts), batch_size), desc="generate", unit="batch", disable=not progress, leave=False):
                chunk = list(prompts[start : start + batch_size])
                encoded = tokenizer(chunk, return_tensors="pt", padding=True).to(device)
                extra = {}
                if self.peft_model is not None:
                    extra["adapter_names"] = [m or BASE_ROW for m in modules[start : start + batch_size]]
                generated = model.generate(**encoded, pad_token_id=pad, **options, **extra)
                new_tokens = generated[:, encoded["input_ids"].shape[1]:]
                outputs.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        finally:
            tokenizer.padding_side = side
        return outputs


CHAT_ROLES = ("system", "user", "assistant")


def chat_prompt(tokenizer, messages, number: int = 1) -> tuple[str, str]:
    """(the prompt to continue, the text to route on) for one conversation of OpenAI chat messages: the
    tokenizer's chat template with the assistant's turn opened, or plain `role: content` lines; routing
    reads the user turns only (the template and system prompt say nothing about the domain)."""
    from ..errors import DataError

    if not isinstance(messages, (list, tuple)) or not messages:
        raise DataError(f"conversation #{number}: expected a non-empty list of messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES or not isinstance(message.get("content"), str):
            raise DataError(f"conversation #{number}, message #{i + 1}: expected {{'role': {'|'.join(CHAT_ROLES)}, "
                            "'content': string}")
    users = [m["content"] for m in messages if m["role"] == "user"]
    if not any(u.strip() for u in users):
        raise DataError(f"conversation #{number}: no user message with content")
    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(clean, add_generation_prompt=True, tokenize=False)
    else:
        prompt = "".join(f"{m['role']}: {m['content']}\n" for m in clean) + "assistant:"
    return prompt, "\n".join(users)
