"""End to end on the real all-MiniLM-L6-v2 (packaged, offline) with the shipped demo data."""

import pytest
from peft import PeftModel
from transformers import AutoModel

from adapterbank import AdapterBank, load_dataset
from adapterbank.demo import DEMO_TASKS, demo_data_dir, run_demo
from adapterbank.models import DEFAULT_BASE, _load_location

pytestmark = pytest.mark.integration


def test_demo_builds_bank_and_routes_every_task(tmp_path):
    lines = []
    result = run_demo(tmp_path / "bank", kind="lora", device="cpu", progress=False, echo=lines.append)
    assert result.accuracy >= 0.95, result.accuracy
    routed = {task: sum(p.task == task for p, g in zip(result.predictions, result.gold) if g in result.bank.task(task).labels)
              for task in DEMO_TASKS}
    assert all(count >= 5 for count in routed.values()), routed
    reopened = AdapterBank.open(tmp_path / "bank", device="cpu")  # fingerprint of the real base checks out
    assert [t.name for t in reopened.tasks()] == list(DEMO_TASKS)
    assert reopened.task("greeting").kind is None
    assert [p.label for p in reopened.predict(result.texts[:5])] == [p.label for p in result.predictions[:5]]
    assert any("[1/4] add-task banking" in line for line in lines)
    lora = PeftModel.from_pretrained(AutoModel.from_pretrained(_load_location(DEFAULT_BASE)), str(reopened.task("banking").path))
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
    assert bank.task("home").size_bytes < 64 * 1024  # 16 x 384 floats + head + router stats
