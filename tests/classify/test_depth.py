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
from adapterbank.kinds import KINDS
from adapterbank_cli.output import added_classification
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


@pytest.mark.parametrize("settings, message", [({"depth": "deep"}, "whole number of layers or 'auto'"),
                                               ({"kind": "prompt", "depth": "auto"}, "enters at the input")])
def test_a_depth_that_is_not_a_number_or_auto_is_refused(bank, task_files, settings, message):
    before = tree_hashes(bank.path)
    with pytest.raises(AdapterBankError, match=message):
        bank.add_task("beta", task_files["beta"][0], **settings, **FAST)
    assert tree_hashes(bank.path) == before


def _scripted_accuracy(monkeypatch, values):
    """Held-out accuracies returned in order (the candidates are tried shallow first); each call's held-out size kept."""
    from adapterbank.classify import depth as search

    seen = []

    def accuracy(trained, tokenizer, token_ids, targets):
        seen.append(len(targets))
        return values[len(seen) - 1]

    monkeypatch.setattr(search, "MIN_VALIDATION_TEXTS", 4)
    monkeypatch.setattr(search, "_accuracy", accuracy)
    return seen


@pytest.mark.parametrize("accuracies, chosen", [((0.50, 0.75), 2), ((0.75, 0.50), 1), ((0.60, 0.60), 1)])
def test_auto_depth_keeps_the_better_candidate_on_held_out_texts_and_the_shallower_on_a_tie(
        bank, task_files, monkeypatch, accuracies, chosen):
    seen = _scripted_accuracy(monkeypatch, accuracies)
    info = bank.add_task("beta", task_files["beta"][0], depth="auto", **FAST)
    search = info.record["metrics"]["depth_search"]
    assert search["held_out_texts"] == len(info.labels) * 2 == seen[0] == seen[1]  # a tenth of each label's 24 texts
    assert search["held_out_accuracy"] == {"1": accuracies[0], "2": accuracies[1]}
    assert search["chosen"] == chosen == info.record["config"]["depth"]
    layers = json.loads((info.path / "adapter_config.json").read_text())["layers_to_transform"]
    assert layers == list(range(2 - chosen, 2))  # the final module, trained on every text at the chosen depth
    assert info.record["hyperparameters"]["lr"] == pytest.approx(KINDS["lora"].default_lr / chosen ** 0.5)
    texts = load_dataset(task_files["beta"][1]).texts[:6]
    assert {p.label for p in bank.predict(texts, task="beta")} <= set(info.labels)


def test_auto_depth_measures_real_held_out_accuracy(bank, task_files, monkeypatch):
    from adapterbank.classify import depth as search

    monkeypatch.setattr(search, "MIN_VALIDATION_TEXTS", 4)
    info = bank.add_task("beta", task_files["beta"][0], depth="auto", **FAST)
    measured = info.record["metrics"]["depth_search"]["held_out_accuracy"]
    assert set(measured) == {"1", "2"} and all(0 <= a <= 1 for a in measured.values())
    assert max(measured.values()) > 1 / len(info.labels)  # the synthetic task is learnable: above chance
    best = max(measured, key=lambda d: (measured[d], -int(d)))
    assert info.record["config"]["depth"] == int(best)
    shown = added_classification(info).splitlines()[-1]  # what the CLI prints after add-task
    assert shown.startswith(f"depth {best} (auto): held-out accuracy by depth 1 ") and "texts)" in shown


def test_auto_depth_keeps_the_banks_depth_when_too_few_texts_are_held_out(bank, task_files, monkeypatch):
    from adapterbank.classify import depth as search

    seen = _scripted_accuracy(monkeypatch, (0.0, 1.0))
    monkeypatch.setattr(search, "MIN_VALIDATION_TEXTS", 10 ** 6)
    info = bank.add_task("beta", task_files["beta"][0], depth="auto", **FAST)
    assert seen == []  # nothing trained to compare
    assert info.record["config"]["depth"] == 1
    assert info.record["metrics"]["depth_search"]["chosen"] == 1
    assert json.loads((info.path / "adapter_config.json").read_text())["layers_to_transform"] == [1]


def test_the_held_out_carve_is_a_seeded_tenth_of_each_label_apart_from_the_training_rows():
    from adapterbank.classify.depth import _carve

    targets = [0] * 40 + [1] * 25 + [2] * 9  # 4, 2 and 0 held out (a tenth, rounded down)
    train, held_out = _carve(targets, seed=3)
    assert sorted(train + held_out) == list(range(len(targets))) and not set(train) & set(held_out)
    assert [sum(targets[i] == label for i in held_out) for label in (0, 1, 2)] == [4, 2, 0]
    assert _carve(targets, seed=3) == (train, held_out) and _carve(targets, seed=4)[1] != held_out
