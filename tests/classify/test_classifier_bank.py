import copy
import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModel, AutoTokenizer

from adapterbank import AdapterBank, load_dataset
from adapterbank.errors import (AdapterBankError, BankError, BaseMismatchError, DataError, InvalidNameError,
                                ModelNotFoundError, TaskExistsError, TaskNotFoundError)
from adapterbank.classify.heads import CosineHead
from adapterbank.kinds import KINDS
from adapterbank.classify.training import module_features

from conftest import DEVICE, TASK_LABELS, tree_hashes, write_jsonl

FAST = {"epochs": 8, "progress": False}


@pytest.fixture()
def bank(tmp_path, tiny_base):
    return AdapterBank.create(tmp_path / "bank", base=tiny_base, device=DEVICE)


def peft_features(base_dir, task_dir, texts):
    """Features computed by PEFT itself from the task directory (no adapterbank code involved)."""
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(AutoModel.from_pretrained(base_dir), str(task_dir)).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return module_features(model, batch["input_ids"], batch["attention_mask"])


CLASSIFIER_KINDS = [name for name, kind in KINDS.items() if "classifier" in kind.families]


@pytest.mark.parametrize("kind", CLASSIFIER_KINDS)
def test_task_dir_is_peft_format_and_bank_predictions_match_peft(bank, tiny_base, task_files, kind):
    train, test = task_files["beta"]
    info = bank.add_task("beta", train, kind=kind, **FAST)
    files = sorted(p.name for p in info.path.iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors", "head.safetensors", "router.safetensors", "task.json"]
    assert json.loads((info.path / "adapter_config.json").read_text())["peft_type"] == KINDS[kind].peft_type
    texts = load_dataset(test).texts[:6]
    head = CosineHead.load(info.path)
    with torch.no_grad():
        expected = torch.softmax(head(peft_features(tiny_base, info.path, texts)), -1).max(-1)
    predictions = bank.predict(texts, label_weight=0)  # the module alone (the router's label posterior: below)
    assert [p.label for p in predictions] == [info.labels[i] for i in expected.indices.tolist()]
    for prediction, p in zip(predictions, expected.values.tolist()):
        assert prediction.task == "beta"
        assert prediction.score == pytest.approx(p * prediction.candidates[0][1], abs=1e-4)


def test_adding_tasks_never_changes_earlier_files(bank, task_files):
    bank.add_task("alpha", task_files["alpha"][0], **FAST)
    before = tree_hashes(bank.path / "tasks" / "alpha")
    bank.add_task("beta", task_files["beta"][0], kind="prompt", **FAST)
    bank.add_task("gamma", task_files["gamma"][0], **FAST)
    assert tree_hashes(bank.path / "tasks" / "alpha") == before
    assert [t.name for t in bank.tasks()] == ["alpha", "beta", "gamma"]
    record = bank.task("alpha").record
    assert record["files"] == {k: v for k, v in before.items() if k != "task.json"}


def test_task_agnostic_prediction_over_all_labels(bank, task_files):
    gold, texts = [], []
    for task, (train, test) in task_files.items():
        bank.add_task(task, train, eval=test, kind="lora", **FAST)
        data = load_dataset(test)
        texts += data.texts
        gold += data.targets
    predictions = AdapterBank.open(bank.path, device=DEVICE).predict(texts, ood_quantile=0)
    accuracy = sum(p.label == g for p, g in zip(predictions, gold)) / len(gold)
    task_of = {label: task for task, labels in TASK_LABELS.items() for label in labels}
    routing = sum(p.task == task_of[g] for p, g in zip(predictions, gold)) / len(gold)
    assert routing >= 0.95, routing
    assert accuracy >= 0.9, accuracy
    assert bank.task("beta").record["metrics"]["eval_accuracy"] >= 0.9
    assert all(len(p.candidates) == 3 and p.candidates[0][0] == p.task for p in predictions)


def test_single_label_task_is_router_only(bank, task_files):
    bank.add_task("alpha", task_files["alpha"][0], **FAST)
    info = bank.add_task("gamma", task_files["gamma"][0], **FAST)
    assert info.kind is None and info.labels == ["g_one"]
    assert sorted(p.name for p in info.path.iterdir()) == ["router.safetensors", "task.json"]
    gamma_texts = load_dataset(task_files["gamma"][1]).texts
    predictions = bank.predict(gamma_texts)
    assert all(p.label == "g_one" and p.task == "gamma" for p in predictions)
    assert all(0.5 < p.score <= 1.0 for p in predictions)


def test_bank_with_only_a_single_label_task_predicts_it(bank, task_files):
    bank.add_task("gamma", task_files["gamma"][0], **FAST)
    assert {p.label for p in bank.predict(["anything at all", "mnop"], ood_quantile=0)} == {"g_one"}


def test_same_seed_gives_same_module(tmp_path, tiny_base, task_files):
    heads = []
    for run in ("one", "two"):
        bank = AdapterBank.create(tmp_path / run, base=tiny_base, device=DEVICE)
        info = bank.add_task("alpha", task_files["alpha"][0], seed=3, **FAST)
        heads.append(CosineHead.load(info.path).weight.detach())
    assert torch.allclose(heads[0], heads[1], atol=1e-6)


def test_bank_json_records_base_and_other_base_is_refused(bank, tiny_base, other_tiny_base):
    manifest = json.loads((bank.path / "bank.json").read_text())
    assert manifest["base"]["id"] == tiny_base
    assert manifest["base"]["fingerprint"].startswith("sha256:")
    assert AdapterBank.open(bank.path, base=tiny_base, device=DEVICE).base_id == tiny_base
    with pytest.raises(BaseMismatchError, match="does not match the bank's base"):
        AdapterBank.open(bank.path, base=other_tiny_base, device=DEVICE)


def test_unknown_model_and_existing_bank_create_nothing(tmp_path, tiny_base, bank):
    with pytest.raises(ModelNotFoundError, match="no such directory"):
        AdapterBank.create(tmp_path / "new", base=str(tmp_path / "missing-model"))
    with pytest.raises(ModelNotFoundError, match="cannot load base model 'nobody/no-such-model'"):
        AdapterBank.create(tmp_path / "new", base="nobody/no-such-model")
    assert not (tmp_path / "new").exists()
    with pytest.raises(BankError, match="already exists"):
        AdapterBank.create(bank.path, base=tiny_base)


def test_bad_input_leaves_bank_unchanged(tmp_path, bank, task_files):
    bank.add_task("alpha", task_files["alpha"][0], **FAST)
    before = tree_hashes(bank.path)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "x", "label": "a"}, {"text": "y"}])
    cases = [
        (DataError, dict(name="new", train=bad)),
        (DataError, dict(name="new", train=tmp_path / "missing.jsonl")),
        (DataError, dict(name="new", train=task_files["beta"][0], eval=task_files["alpha"][1])),
        (TaskExistsError, dict(name="alpha", train=task_files["beta"][0])),
        (InvalidNameError, dict(name="../x", train=task_files["beta"][0])),
        (AdapterBankError, dict(name="new", train=task_files["beta"][0], kind="adapterfusion")),
        (AdapterBankError, dict(name="new", train=task_files["beta"][0], rank=0)),
    ]
    for error, kwargs in cases:
        with pytest.raises(error):
            bank.add_task(**kwargs, **FAST)
    assert tree_hashes(bank.path) == before
    assert [t.name for t in AdapterBank.open(bank.path, lazy=True).tasks()] == ["alpha"]


def test_failure_during_training_leaves_bank_unchanged(bank, task_files, monkeypatch):
    bank.add_task("alpha", task_files["alpha"][0], **FAST)
    before = tree_hashes(bank.path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # the user pressing Ctrl-C mid-training

    monkeypatch.setattr("adapterbank.classify.training.train_classifier", crash)
    with pytest.raises(KeyboardInterrupt):
        bank.add_task("beta", task_files["beta"][0], **FAST)
    assert tree_hashes(bank.path) == before
    assert [t.name for t in bank.tasks()] == ["alpha"]


def test_remove_task_updates_routing(bank, task_files):
    bank.add_task("alpha", task_files["alpha"][0], **FAST)
    bank.add_task("beta", task_files["beta"][0], **FAST)
    beta_texts = load_dataset(task_files["beta"][1]).texts[:4]
    assert {p.task for p in bank.predict(beta_texts)} == {"beta"}
    bank.remove_task("beta")
    assert {p.task for p in bank.predict(beta_texts, ood_quantile=0)} == {"alpha"}
    assert not (bank.path / "tasks" / "beta").exists()


def test_predict_on_empty_bank_and_bad_texts(bank, task_files):
    with pytest.raises(BankError, match="has no tasks yet"):
        bank.predict(["hello"])
    bank.add_task("alpha", task_files["alpha"][0], **FAST)
    assert bank.predict([]) == []
    assert len(bank.predict("a single string")) == 1
    with pytest.raises(DataError, match="text #2: expected a string"):
        bank.predict(["ok", 3])


def test_open_bank_sees_tasks_added_by_another_writer(bank, tiny_base, task_files):
    bank.add_task("alpha", task_files["alpha"][0], **FAST)
    beta_texts = load_dataset(task_files["beta"][1]).texts[:4]
    assert {p.task for p in bank.predict(beta_texts, ood_quantile=0)} == {"alpha"}
    other = AdapterBank.open(bank.path, device=DEVICE)  # e.g. another process
    other.add_task("beta", task_files["beta"][0], **FAST)
    assert {p.task for p in bank.predict(beta_texts)} == {"beta"}
    # the other writer replaces "beta" (whose module this bank has loaded) by a module with other weights
    other.remove_task("beta")
    other.add_task("beta", task_files["beta"][0], seed=7, epochs=2, progress=False)
    fresh = AdapterBank.open(bank.path, device=DEVICE).predict(beta_texts)
    assert [(p.label, p.score) for p in bank.predict(beta_texts)] == [(p.label, p.score) for p in fresh]


def test_text_that_fits_no_task_is_out_of_scope(bank, task_files):
    bank.add_task("alpha", task_files["alpha"][0], **FAST)
    beta = bank.predict(load_dataset(task_files["beta"][1]).texts[:4])
    assert all(p.label is None and p.task is None and p.candidates[0][0] == "alpha" for p in beta)
    alpha = bank.predict(load_dataset(task_files["alpha"][1]).texts)
    assert sum(p.label is not None for p in alpha) >= 0.8 * len(alpha)


@pytest.mark.parametrize("kind", CLASSIFIER_KINDS)
def test_mixed_batch_equals_one_text_at_a_time_for_every_composition(bank, task_files, kind):
    bank.add_task("alpha", task_files["alpha"][0], **FAST)
    bank.add_task("beta", task_files["beta"][0], kind=kind, **FAST)  # a batch mixing two kinds
    texts = [t for pair in zip(load_dataset(task_files["alpha"][1]).texts, load_dataset(task_files["beta"][1]).texts)
             for t in pair][:12]
    for composition, k in (("top1", 1), ("output", 2), ("weights", 2)):
        together = bank.predict(texts, composition=composition, top_k=k, ood_quantile=0)
        alone = [bank.predict([t], composition=composition, top_k=k, ood_quantile=0)[0] for t in texts]
        assert [p.label for p in together] == [p.label for p in alone], composition
        assert all(abs(a.score - b.score) < 1e-4 for a, b in zip(together, alone)), composition
    assert {p.task for p in together} == {"alpha", "beta"}  # the batch really mixed two modules


def test_weights_composition_with_one_module_equals_top1(bank, task_files):
    for task in ("alpha", "beta"):
        bank.add_task(task, task_files[task][0], **FAST)
    texts = load_dataset(task_files["beta"][1]).texts[:6]
    top1 = bank.predict(texts, ood_quantile=0)
    weights = bank.predict(texts, composition="weights", top_k=1, ood_quantile=0)
    assert [p.label for p in top1] == [p.label for p in weights]


def test_forced_task_and_option_errors(bank, task_files):
    bank.add_task("alpha", task_files["alpha"][0], **FAST)
    bank.add_task("beta", task_files["beta"][0], **FAST)
    texts = load_dataset(task_files["beta"][1]).texts[:3]
    assert {p.task for p in bank.predict(texts, task="alpha")} == {"alpha"}
    with pytest.raises(TaskNotFoundError):
        bank.predict(texts, task="nope")
    for bad in ({"composition": "blend"}, {"method": "magic"}, {"top_k": 0}, {"ood_quantile": 1.5}, {"label_weight": -0.5}):
        with pytest.raises(AdapterBankError):
            bank.predict(texts, **bad)


def test_the_answer_is_the_module_times_the_router_label_posterior(bank, task_files):
    """label_weight w: a task's label probabilities are the module's times the router's posterior over the task's
    labels to the power w, renormalised; bank.json holds the default; 0 is the module alone."""
    from adapterbank.routing.methods import DEFAULT_LABEL_WEIGHT

    bank.add_task("alpha", task_files["alpha"][0], **FAST)
    info = bank.add_task("beta", task_files["beta"][0], **FAST)
    assert bank.registry.manifest["router"]["label_weight"] == DEFAULT_LABEL_WEIGHT > 0
    texts = load_dataset(task_files["beta"][1]).texts[:6]
    n = len(info.labels)

    def distribution(predictions):
        return torch.tensor([[dict((label, p) for label, _, p in q.labels)[label] for label in info.labels] for q in predictions])

    alone = distribution(bank.predict(texts, task="beta", top_labels=n, label_weight=0))
    router = bank._index(bank._records()).label_scores(bank.router_features(texts), "beta",
                                                       bank.registry.manifest["router"]["method"]).exp()
    moved = False
    for weight in (DEFAULT_LABEL_WEIGHT, 1.0):
        expected = alone * router.pow(weight)
        expected /= expected.sum(-1, keepdim=True)
        fused = distribution(bank.predict(texts, task="beta", top_labels=n, label_weight=weight))
        assert torch.allclose(fused, expected, atol=1e-3), weight
        moved |= not torch.allclose(fused, alone, atol=1e-3)
    assert moved  # the router's posterior changes the answer
    default = bank.predict(texts, top_labels=n)
    assert [(p.label, p.labels) for p in default] == [(p.label, p.labels) for p in bank.predict(texts, top_labels=n,
                                                                                                 label_weight=DEFAULT_LABEL_WEIGHT)]


def test_router_index_is_saved_and_small_module_cache_still_answers(bank, task_files):
    from adapterbank.classify.inference import RoutedModel
    from adapterbank.routing.index import RouterIndex
    from adapterbank.store.registry import INDEX_FILE

    for task in ("alpha", "beta"):
        bank.add_task(task, task_files[task][0], **FAST)
    saved = RouterIndex.load(bank.path / INDEX_FILE)
    assert saved.task_ids == [bank.task(n).record["id"] for n in ("alpha", "beta")]
    texts = load_dataset(task_files["alpha"][1]).texts[:3] + load_dataset(task_files["beta"][1]).texts[:3]
    expected = [p.label for p in bank.predict(texts, ood_quantile=0)]
    reopened = AdapterBank.open(bank.path, device=DEVICE)
    reopened._runner = RoutedModel(reopened.base.model, reopened.upper_layers, cache_size=1, router_map=reopened.router_map)
    assert [p.label for p in reopened.predict(texts, batch_size=1, ood_quantile=0)] == expected
    assert len(reopened._runner.loaded) == 1


@pytest.mark.parametrize("kind", [k for k in CLASSIFIER_KINDS if KINDS[k].merges_into_weights])
def test_classification_export_is_the_encoder_with_the_module_merged(tmp_path, tiny_base, task_files, kind):
    from peft import PeftModel
    from transformers import AutoModel

    encoder_bank = AdapterBank.create(tmp_path / "enc", base=tiny_base, device=DEVICE)
    encoder_bank.add_task("alpha", task_files["alpha"][0], kind=kind, epochs=2, progress=False)
    out = encoder_bank.export(tmp_path / "export", task="alpha")
    assert json.loads((out / "labels.json").read_text())["labels"] == encoder_bank.task("alpha").labels
    assert (out / "head.safetensors").is_file()
    exported = AutoModel.from_pretrained(out)
    reference = PeftModel.from_pretrained(copy.deepcopy(encoder_bank.base.model).cpu(), str(encoder_bank.task("alpha").path))
    text = encoder_bank.base.tokenizer(["aaaaaa bcd ef"], return_tensors="pt")
    with torch.no_grad():
        diff = (exported(**text).last_hidden_state - reference(**text).last_hidden_state).abs().max()
    assert diff < 1e-4


def test_a_one_label_task_has_no_module_to_export(bank, task_files, tmp_path):
    bank.add_task("gamma", task_files["gamma"][0], **FAST)
    for peft in (True, False):
        with pytest.raises(AdapterBankError, match="'gamma' has a single label: it has no module"):
            bank.export(tmp_path / "out", task="gamma", peft=peft)
    assert not (tmp_path / "out").exists()


def test_route_on_a_classification_bank(bank, task_files):
    assert [(r.tasks, r.in_scope) for r in bank.route(["aaaaaa bcd"])] == [([], False)]  # no tasks yet: no candidates
    for task in ("alpha", "beta"):
        bank.add_task(task, task_files[task][0], **FAST)
    texts = load_dataset(task_files["alpha"][1]).texts[:3] + load_dataset(task_files["beta"][1]).texts[:3]
    routes = bank.route(texts)
    assert [r.tasks[0] for r in routes] == ["alpha"] * 3 + ["beta"] * 3
    assert [r.tasks[0] for r in routes] == [p.candidates[0][0] for p in bank.predict(texts)]  # what predict routes by


def test_task_json_records_the_config_and_a_sha256_data_fingerprint(bank, task_files):
    info = bank.add_task("beta", task_files["beta"][0], kind="prompt", virtual_tokens=4, **FAST)
    assert info.record["config"] == {"kind": "prompt", "params": {"virtual_tokens": 4}, "epochs": 8, "lr": None,
                                     "batch_size": 32, "seed": 0, "max_length": 128, "depth": None}
    assert info.record["hyperparameters"]["virtual_tokens"] == 4
    assert info.record["data"]["train_fingerprint"].startswith("sha256:")


def test_operations_of_the_other_family_fail_with_one_clear_line(bank):
    for operation in ("generate", "merge", "rollback", "base_versions"):
        assert not hasattr(bank, operation)
        with pytest.raises(AdapterBankError, match=rf"{operation} needs a causal-LM bank .*is a classification bank"):
            getattr(bank, operation)
    assert hasattr(bank, "predict") and hasattr(bank, "route")

