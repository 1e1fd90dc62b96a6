"""Using an exported classification task without the bank: `load_classifier(directory)`.

`adapterbank export BANK --task T --out DIR` writes the encoder with the module merged in (or, with
`--peft`, the module as a PEFT directory naming its base) plus `head.safetensors` and `labels.json`.
The head is usually a cosine classifier over mean-pooled last hidden states (classify/heads.py), which no
stock transformers head computes, so this small loader is the one piece of adapterbank such a directory needs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AdapterBankError


@dataclass
class ExportedClassifier:
    """An exported task: `predict(texts)` gives (label, probability) per text."""

    model: Any  # torch.nn.Module (torch is imported when a classifier is loaded, not with adapterbank)
    tokenizer: Any
    head: Any  # a heads.Head
    labels: list[str]
    max_length: int
    skip: int = 0  # leading positions that are not the text's (a prompt-tuning module's virtual tokens)

    def predict(self, texts: list[str], batch_size: int = 64) -> list[tuple[str, float]]:
        import torch

        from .heads import pooled

        answers = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt")
            with torch.no_grad():
                hidden = self.model(**batch).last_hidden_state[:, self.skip:]
                probabilities = self.head.read(pooled(hidden, batch["attention_mask"])).softmax(-1)
            best = probabilities.max(-1)
            answers += [(self.labels[i], round(p, 6)) for p, i in zip(best.values.tolist(), best.indices.tolist())]
        return answers


def load_classifier(directory: str | os.PathLike) -> ExportedClassifier:
    """Load what `export --task` wrote: a merged encoder, or a PEFT directory (its base is loaded from the
    path its adapter_config.json names, which for the packaged MiniLM is the package's own folder)."""
    from transformers import AutoModel, AutoTokenizer

    from .heads import LABELS_FILE, load_head

    directory = Path(directory)
    if not (directory / LABELS_FILE).is_file():
        raise AdapterBankError(f"{directory}: no {LABELS_FILE}: export a task with `adapterbank export BANK --task NAME`")
    meta = json.loads((directory / LABELS_FILE).read_text(encoding="utf-8"))
    head = load_head(directory)
    if (directory / "adapter_config.json").is_file():
        from peft import PeftModel

        base_name = json.loads((directory / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]
        model = PeftModel.from_pretrained(AutoModel.from_pretrained(base_name), str(directory))
        tokenizer = AutoTokenizer.from_pretrained(base_name)
        skip = int(getattr(model.peft_config["default"], "num_virtual_tokens", 0) or 0) \
            if model.peft_config["default"].is_prompt_learning else 0
    else:
        model, tokenizer, skip = AutoModel.from_pretrained(str(directory)), AutoTokenizer.from_pretrained(str(directory)), 0
    return ExportedClassifier(model.eval(), tokenizer, head, list(meta["labels"]), int(meta.get("max_length", 128)), skip)
