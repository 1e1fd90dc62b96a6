"""Exporting from a bank to formats other tools load without adapterbank installed.

- A merged checkpoint: a base (a causal bank's base version, or a classification bank's encoder) with
  one task's LoRA merged in by PEFT's `merge_and_unload`, saved as config + tokenizer + safetensors.
  Classification banks also get the task's head (`head.safetensors`, `labels.json`).
- A PEFT directory (`peft=True`): the module's adapter_config.json + adapter_model.safetensors, with
  `base_model_name_or_path` naming the base it needs, for PEFT, vLLM or LoRAX to serve.

The output is written to a temp directory beside `out` and renamed into place: nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from .errors import AdapterBankError
from .store.registry import fsync_dir

PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")


def check_target(out: Path) -> Path:
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AdapterBankError(f"{out}: already exists and is not an empty directory; choose a new --out")
    return out


def publish(out: Path, fill) -> Path:
    """Let `fill(staging_dir)` write the export, then rename it to `out` (atomic)."""
    out = check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        fill(staging)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.rename(staging, out)
        fsync_dir(out.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out


def merged_model(base_model, task_dir: Path):
    """A copy of `base_model` with the LoRA module at `task_dir` merged into its weights."""
    import copy

    from peft import PeftModel

    from .kinds import quiet_peft

    with quiet_peft():
        peft_model = PeftModel.from_pretrained(copy.deepcopy(base_model), str(task_dir))
    return peft_model.merge_and_unload()


def write_peft_dir(task_dir: Path, staging: Path, base_name: str) -> None:
    """The module as a PEFT directory whose config names the base to load it on."""
    shutil.copyfile(task_dir / "adapter_model.safetensors", staging / "adapter_model.safetensors")
    config = json.loads((task_dir / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_name
    (staging / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def write_head(task_dir: Path, staging: Path, labels: list[str]) -> None:
    """A classification task's head and label names beside the merged encoder."""
    if (task_dir / "head.safetensors").is_file():
        shutil.copyfile(task_dir / "head.safetensors", staging / "head.safetensors")
    (staging / "labels.json").write_text(json.dumps({"labels": labels}, indent=2, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
