"""A task's module may adapt more top layers than the bank's split (`depth`): it must answer exactly as PEFT
does, share mixed batches with shallow tasks without changing their answers, and be refused where it has
no meaning."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModel, AutoTokenizer

from adapterbank import AdapterBank, load_dataset
from adapterbank.classify.heads import CosineHead
from adapterbank.classify.training import module_features
from adapterbank.errors import AdapterBankError
from conftest import DEVICE, tree_hashes

FAST = {"epochs": 8, "progress": False}


@pytest.fixture
def bank(tmp_path, tiny_base):
    return AdapterBank.create(tmp_path / "bank", base=tiny_base, device=DEVICE)


def test_a_deep_module_answers_as_peft_and_mixed_batches_keep_every_answer(bank, tiny_base, task_files):
    bank.add_task("alpha", task_files["alpha"][0], **FAST)
    deep = bank.add_task("beta", task_files["beta"][0], depth=2, **FAST)  # the tiny base's 2 layers; the bank's split is 1
    assert json.loads((deep.path / "adapter_config.json").read_text())["layers_to_transform"] == [0, 1]
    assert deep.record["config"]["depth"] == 2

    texts = load_dataset(task_files["beta"][1]).texts[:6]
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    reference = PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_base), str(deep.path)).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = torch.softmax(CosineHead.load(deep.path)(module_features(reference, batch["input_ids"],
                                                                            batch["attention_mask"])), -1)
    alone = bank.predict(texts, task="beta")
    assert [p.label for p in alone] == [deep.labels[i] for i in expected.argmax(-1).tolist()]
    assert [p.score for p in alone] == pytest.approx(expected.max(-1).values.tolist(), abs=1e-4)

    shallow = load_dataset(task_files["alpha"][1]).texts[:6]
    mixed = bank.predict(shallow + texts, ood_quantile=0)
    separate = bank.predict(shallow, ood_quantile=0) + bank.predict(texts, ood_quantile=0)
    assert [(p.label, p.task) for p in mixed] == [(p.label, p.task) for p in separate]
    assert [p.score for p in mixed] == pytest.approx([p.score for p in separate], abs=1e-5)
    assert {p.task for p in mixed} == {"alpha", "beta"}


@pytest.mark.parametrize("settings, message", [({"kind": "prompt", "depth": 2}, "enters at the input"),
                                               ({"depth": 3}, "has 2 transformer layers")])
def test_a_depth_without_meaning_is_refused_and_the_bank_is_unchanged(bank, task_files, settings, message):
    bank.add_task("alpha", task_files["alpha"][0], **FAST)
    before = tree_hashes(bank.path)
    with pytest.raises(AdapterBankError, match=message):
        bank.add_task("beta", task_files["beta"][0], **settings, **FAST)
    assert tree_hashes(bank.path) == before
