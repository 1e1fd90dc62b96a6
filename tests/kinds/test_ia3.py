"""IA3, the third kind, added through the registry alone: what it adapts, that the bank's per-row
updates equal PEFT's own IA3 layers, and that it serves routed mixed batches and exports."""

import copy

import pytest
import torch
from peft import PeftModel

from adapterbank import AdapterBank, load_dataset
from adapterbank.classify.training import module_features
from adapterbank.kinds import KINDS, get_kind

from conftest import DEVICE

FAST = {"epochs": 8, "progress": False}


@pytest.fixture()
def bank(tmp_path, tiny_base):
    return AdapterBank.create(tmp_path / "bank", base=tiny_base, device=DEVICE)


def test_ia3_is_registered_for_classification_banks():
    kind = get_kind("ia3", "classifier")
    assert KINDS["ia3"] is kind and kind.peft_type == "IA3" and kind.batching == "upper" and kind.merges_into_weights
    assert kind.params() == kind.Params()  # no hyper-parameters of its own


def test_ia3_rescales_keys_values_and_the_ffn_of_the_top_layer_only(bank, task_files):
    info = bank.add_task("alpha", task_files["alpha"][0], kind="ia3", **FAST)
    from safetensors.torch import load_file

    vectors = load_file(str(info.path / "adapter_model.safetensors"))
    assert sorted(vectors) == ["base_model.model.encoder.layer.1.attention.self.key.ia3_l",
                               "base_model.model.encoder.layer.1.attention.self.value.ia3_l",
                               "base_model.model.encoder.layer.1.output.dense.ia3_l"]
    assert vectors["base_model.model.encoder.layer.1.output.dense.ia3_l"].shape == (1, 64)  # the FFN's inner width
    assert any(not torch.equal(v, torch.ones_like(v)) for v in vectors.values())  # trained away from identity
    assert info.record["hyperparameters"]["kind"] == "ia3" and info.record["config"]["kind"] == "ia3"


def test_the_banks_rows_equal_peft_ia3_in_a_batch_mixed_with_lora(bank, tiny_base, task_files):
    from transformers import AutoModel, AutoTokenizer

    bank.add_task("alpha", task_files["alpha"][0], **FAST)
    info = bank.add_task("beta", task_files["beta"][0], kind="ia3", **FAST)
    texts = load_dataset(task_files["beta"][1]).texts[:4] + load_dataset(task_files["alpha"][1]).texts[:4]
    model = PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_base), str(info.path)).eval()
    batch = AutoTokenizer.from_pretrained(tiny_base)(texts[:4], padding=True, return_tensors="pt")
    from adapterbank.classify.heads import CosineHead

    with torch.no_grad():
        expected = torch.softmax(CosineHead.load(info.path)(module_features(model, batch["input_ids"], batch["attention_mask"])), -1)
    predictions = bank.predict(texts, ood_quantile=0, label_weight=0)  # the modules alone, as PEFT runs them
    assert [p.task for p in predictions] == ["beta"] * 4 + ["alpha"] * 4
    assert [p.label for p in predictions[:4]] == [info.labels[i] for i in expected.argmax(-1).tolist()]
    for prediction, p in zip(predictions, expected.max(-1).values.tolist()):
        assert prediction.score == pytest.approx(p * prediction.candidates[0][1], abs=1e-4)


def test_ia3_exports_as_a_merged_encoder_and_as_a_peft_directory(bank, task_files, tmp_path):
    from transformers import AutoModel

    info = bank.add_task("alpha", task_files["alpha"][0], kind="ia3", **FAST)
    merged = AutoModel.from_pretrained(bank.export(tmp_path / "merged", task="alpha"))
    peft_dir = bank.export(tmp_path / "peft", task="alpha", peft=True)
    reference = PeftModel.from_pretrained(copy.deepcopy(bank.base.model).cpu(), str(peft_dir)).eval()
    text = bank.base.tokenizer(["aaaaaa bcd ef", "bbbbbb cd"], padding=True, return_tensors="pt")
    with torch.no_grad():
        diff = (merged(**text).last_hidden_state - reference(**text).last_hidden_state).abs().max()
    assert diff < 1e-4 and (tmp_path / "merged" / "labels.json").is_file() and info.kind == "ia3"
