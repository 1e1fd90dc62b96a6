"""End to end on the real all-MiniLM-L6-v2 (packaged, offline) with the shipped demo data."""

import re
import sys

import pytest
from peft import PeftModel
from transformers import AutoModel

from adapterbank import AdapterBank, load_dataset
from adapterbank.demo import DEMO_TASKS, demo_data_dir
from adapterbank_cli.main import main
from adapterbank.core.models import DEFAULT_BASE, load_location

pytestmark = pytest.mark.integration


def _demo_labels() -> set[str]:
    return {label for task in DEMO_TASKS for label in load_dataset(demo_data_dir() / task / "train.jsonl").labels}


def test_demo_command_builds_bank_and_routes_every_task(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["adapterbank", "demo", "--bank", str(tmp_path / "bank"), "--device", "cpu"])
    with pytest.raises(SystemExit) as exited:
        main()
    out = capsys.readouterr().out
    assert exited.value.code in (0, None)
    assert "[1/4] add-task banking" in out and "4 task(s)" in out
    accuracy = float(re.search(r"task-agnostic accuracy: ([\d.]+)%", out).group(1))
    assert accuracy >= 95.0, out
    rows = [line.split() for line in out.splitlines() if line.startswith("  ") and line.rstrip().endswith(tuple(_demo_labels()))]
    assert {row[-3] for row in rows} >= set(DEMO_TASKS)  # every task's texts were routed to it at least once
    reopened = AdapterBank.open(tmp_path / "bank", device="cpu")  # fingerprint of the real base checks out
    assert [t.name for t in reopened.tasks()] == list(DEMO_TASKS)
    assert reopened.task("greeting").kind is None
    test = load_dataset(demo_data_dir() / "travel" / "test.jsonl")
    assert sum(p.label == g for p, g in zip(reopened.predict(test.texts), test.targets)) >= len(test) - 1
    lora = PeftModel.from_pretrained(AutoModel.from_pretrained(load_location(DEFAULT_BASE)), str(reopened.task("banking").path))
    assert lora.peft_config["default"].peft_type == "LORA"


def test_prompt_tuning_end_to_end(tmp_path):
    bank = AdapterBank.create(tmp_path / "bank", device="cpu")
    texts, gold = [], []
    for task in ("banking", "home"):
        data = demo_data_dir() / task
        info = bank.add_task(task, data / "train.jsonl", eval=data / "test.jsonl", kind="prompt", epochs=12, progress=False)
        assert info.kind == "prompt" and info.record["metrics"]["eval_accuracy"] >= 0.9
        test = load_dataset(data / "test.jsonl")
        texts += test.texts
        gold += test.targets
    predictions = bank.predict(texts)
    accuracy = sum(p.label == g for p, g in zip(predictions, gold)) / len(gold)
    assert accuracy >= 0.9, accuracy
    home = bank.task("home").path  # the module is tiny; router statistics carry a 1152 x 1152 covariance (int8 correlations)
    assert (home / "adapter_model.safetensors").stat().st_size + (home / "head.safetensors").stat().st_size < 64 * 1024
    assert (home / "router.safetensors").stat().st_size < 1024 * 1024
