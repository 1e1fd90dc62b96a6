"""IA3: learned vectors that rescale activations (Liu et al. 2022, "(IA)^3"), trained and stored by PEFT.

On BERT-like encoders the vectors sit on the top transformer layers only, as the paper places them:
the attention keys and values (`l_k`, `l_v`: outputs rescaled) and the feed-forward block's inner
activation (`l_ff`: the input of its output projection rescaled). A few thousand numbers per task,
which fold into the weights exactly (PEFT's `merge_and_unload`).

A row's update at a rescaled linear layer is what the vector changes of the base's output:
`out * (l - 1)` for outputs, `(x * (l - 1)) @ W.T` for inputs, so rows of one batch can use different
tasks' vectors (kinds/base.py, `upper` batching).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import BankError
from .base import Kind, register

ATTENTION_TARGETS = r"attention\.self\.(key|value)"  # l_k, l_v: outputs rescaled
FEEDFORWARD_TARGET = r"output\.dense"  # l_ff: the FFN's output projection, its input rescaled
_PEFT_PREFIX = "base_model.model."


def _in_layers(layers: list[int], inner: str) -> str:
    return rf"(.*\.)?layer\.({'|'.join(map(str, layers))})\.({inner})"


@register
class IA3(Kind):
    name = "ia3"
    summary = "learned rescaling of attention keys, values and feed-forward activations (PEFT IA3)"
    peft_type = "IA3"
    default_lr = 3e-3  # validation accuracy is flat from 1e-3 to 1e-2 (benchmarks/lr_sweep.py): the plateau's middle
    families = ("classifier",)
    batching = "upper"
    merges_into_weights = True

    def peft_config(self, model, params, layers: list[int] | None = None, causal: bool = False):
        from peft import IA3Config, TaskType

        task_type = TaskType.CAUSAL_LM if causal else TaskType.FEATURE_EXTRACTION
        if not layers:  # PEFT's defaults for the architecture
            return IA3Config(task_type=task_type)
        return IA3Config(task_type=task_type,
                         target_modules=_in_layers(layers, f"{ATTENTION_TARGETS}|{FEEDFORWARD_TARGET}"),
                         feedforward_modules=_in_layers(layers, FEEDFORWARD_TARGET))

    def hyperparameters(self, config) -> dict:
        return {"target_modules": config.target_modules if isinstance(config.target_modules, str) else
                sorted(config.target_modules or []),
                "feedforward_modules": config.feedforward_modules if isinstance(config.feedforward_modules, str) else
                sorted(config.feedforward_modules or [])}

    def load_updates(self, task_dir: Path, layers: set[int]) -> dict:
        """{path: (l - 1 as a flat vector, whether the input (feed-forward) or the output is rescaled)}."""
        from safetensors.torch import load_file

        task_dir = Path(task_dir)
        config = json.loads((task_dir / "adapter_config.json").read_text(encoding="utf-8"))
        if config.get("peft_type") != self.peft_type:
            raise BankError(f"{task_dir / 'adapter_config.json'}: not an IA3 module (peft_type {config.get('peft_type')!r})")
        feedforward = config.get("feedforward_modules") or []
        updates = {}
        for key, vector in load_file(str(task_dir / "adapter_model.safetensors")).items():
            if not key.endswith(".ia3_l"):
                continue
            path = key[: -len(".ia3_l")].removeprefix(_PEFT_PREFIX)
            parts = path.split(".")
            layer = int(parts[parts.index("layer") + 1]) if "layer" in parts else -1
            if layer not in layers:
                raise BankError(f"{task_dir}: module adapts {path}, outside the bank's upper layers {sorted(layers)}")
            is_ff = (bool(re.fullmatch(feedforward, path)) if isinstance(feedforward, str)
                     else any(path.endswith(target) for target in feedforward))
            updates[path] = (vector.float().flatten() - 1.0, is_ff)
        return updates

    def row_update(self, tensors, linear, x, out, rows):
        change, is_feedforward = tensors
        if is_feedforward:
            return (x * change) @ linear.weight.T
        return out[rows] * change
