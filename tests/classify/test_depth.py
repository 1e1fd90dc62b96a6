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
    alone = bank.predict(texts, task="beta", label_weight=0)  # the module alone, as PEFT runs it
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


@pytest.mark.parametrize("accuracies, chosen", [((0.50, 0.75), 2), ((0.75, 0.50), 1), ((0.60, 0.60), 1),
                                                ((0.60, 0.605), 1),  # deeper, but by less than a point
                                                ((0.995,), 1)])  # the top layer leaves no point to win: not searched
@pytest.mark.parametrize("asked", [{"depth": "auto"}, {}])  # the default searches as 'auto' does
def test_auto_depth_keeps_the_deeper_candidate_only_when_it_wins_by_more_than_a_point_on_held_out_texts(
        bank, task_files, monkeypatch, accuracies, chosen, asked):
    seen = _scripted_accuracy(monkeypatch, accuracies)
    info = bank.add_task("beta", task_files["beta"][0], **asked, **FAST)
    search = info.record["metrics"]["depth_search"]
    assert search["held_out_texts"] == len(info.labels) * 2  # a tenth of each label's 24 texts
    assert seen == [search["held_out_texts"]] * len(accuracies)  # the deeper module is trained only when it could win
    assert ("cannot win by more than that" in search.get("note", "")) == (len(accuracies) == 1)
    assert search["held_out_accuracy"] == {str(depth): a for depth, a in zip((1, 2), accuracies)}
    assert search["chosen"] == chosen == info.record["config"]["depth"]
    layers = json.loads((info.path / "adapter_config.json").read_text())["layers_to_transform"]
    assert layers == list(range(2 - chosen, 2))  # the final module, trained on every text at the chosen depth
    assert info.record["hyperparameters"]["lr"] == pytest.approx(KINDS["lora"].default_lr / chosen ** 0.5)
    texts = load_dataset(task_files["beta"][1]).texts[:6]
    assert {p.label for p in bank.predict(texts, task="beta")} <= set(info.labels)


def test_a_prompt_module_by_default_is_not_searched_and_not_refused(bank, task_files, monkeypatch):
    seen = _scripted_accuracy(monkeypatch, (0.0, 1.0))
    info = bank.add_task("beta", task_files["beta"][0], kind="prompt", **FAST)
    assert seen == [] and "depth_search" not in info.record["metrics"] and info.record["config"]["depth"] is None


def test_auto_depth_measures_real_held_out_accuracy(bank, task_files, monkeypatch):
    from adapterbank.classify import depth as search

    monkeypatch.setattr(search, "MIN_VALIDATION_TEXTS", 4)
    info = bank.add_task("beta", task_files["beta"][0], depth="auto", **FAST)
    found = info.record["metrics"]["depth_search"]
    measured = found["held_out_accuracy"]
    assert all(0 <= a <= 1 for a in measured.values())
    assert measured["1"] > 1 / len(info.labels)  # the synthetic task is learnable: above chance
    if measured["1"] >= 1 - search.MIN_GAIN:  # the top layer leaves no point to win: nothing deeper is trained
        assert set(measured) == {"1"} and "cannot win by more than that" in found["note"] and found["chosen"] == 1
    else:
        assert set(measured) == {"1", "2"} and found["chosen"] == (2 if measured["2"] > measured["1"] + 0.01 else 1)
    assert info.record["config"]["depth"] == found["chosen"]
    shown = added_classification(info).splitlines()[-1]  # what the CLI prints after add-task
    assert shown.startswith(f"depth {found['chosen']} (auto): held-out accuracy by depth 1 ") and "texts)" in shown


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


@pytest.mark.parametrize("cache_bytes", [1 << 30, 0])  # states kept, and recomputed per batch
def test_a_subset_of_the_lower_pass_gives_the_states_of_its_rows_without_running_again(tiny_base, cache_bytes):
    from adapterbank.classify.training import LowerStates
    from adapterbank.core.backbone import SplitEncoder

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    texts = ["a short one", "a somewhat longer text than that", "mid length text", "x", "four words in all"]
    token_ids = [tokenizer(t)["input_ids"] for t in texts]
    split = SplitEncoder(AutoModel.from_pretrained(tiny_base).eval(), 1)
    whole = LowerStates(split, tokenizer, token_ids, torch.device("cpu"), cache_bytes)
    rows = [4, 1, 3]
    part = whole.subset(rows)
    fresh = LowerStates(split, tokenizer, [token_ids[r] for r in rows], torch.device("cpu"), cache_bytes)
    assert torch.equal(part.router_features, whole.router_features[rows])
    assert torch.allclose(part.router_features, fresh.router_features, atol=1e-6)
    for a, b in zip(part.batch([0, 2]), fresh.batch([0, 2])):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
    if cache_bytes:  # the same tensors, not copies
        assert part.cached[0].data_ptr() == whole.cached[4].data_ptr()
