"""`adapterbank import` on classification banks: a plain PEFT sequence-classification run (not the bank's)
answers in the bank as it did in PEFT; a module exported by a bank comes back the same; misfits are refused
in one line and leave the bank unchanged."""

from __future__ import annotations

import json

import pytest

from conftest import DEVICE, TASK_LABELS, copy_bank, invoke, synthetic_rows, tree_hashes, write_jsonl


def _plain_peft_classifier(base: str, folder, layers, rows, task_type="SEQ_CLS", steps=40):
    """What a user's own PEFT run writes: LoRA + classifier (modules_to_save) on BertForSequenceClassification."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    labels = sorted({row["label"] for row in rows}, reverse=True)  # an order the bank would not guess
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = get_peft_model(AutoModelForSequenceClassification.from_pretrained(base, num_labels=len(labels)),
                           LoraConfig(task_type=task_type, r=4, target_modules=["query", "value"], layers_to_transform=layers))
    batch = tokenizer([row["text"] for row in rows], padding=True, return_tensors="pt")
    targets = torch.tensor([labels.index(row["label"]) for row in rows])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(**batch).logits, targets).backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(folder)
    return model, tokenizer, labels


def test_import_a_plain_peft_sequence_classifier(classifier_template, tiny_base, tmp_path):
    import torch

    from adapterbank import AdapterBank
    from adapterbank.store.verify import verify_bank

    bank_dir = copy_bank(classifier_template, tmp_path / "bank")
    upper = AdapterBank.open(bank_dir, device="cpu")._model().split.upper_indices
    rows = synthetic_rows("delta", per_label=16, seed=0)
    examples = write_jsonl(tmp_path / "delta.jsonl", rows)
    model, tokenizer, labels = _plain_peft_classifier(tiny_base, tmp_path / "seqcls", upper, rows)
    test = [row["text"] for row in synthetic_rows("delta", per_label=6, seed=1)]
    with torch.no_grad():
        expected = model(**tokenizer(test, padding=True, return_tensors="pt")).logits.softmax(-1)

    lower, _, _ = _plain_peft_classifier(tiny_base, tmp_path / "lower", [0], rows, steps=1)
    _plain_peft_classifier(tiny_base, tmp_path / "headless", upper, rows, task_type="FEATURE_EXTRACTION", steps=0)
    one_label = write_jsonl(tmp_path / "one.jsonl", [row for row in rows if row["label"] == "d_one"])
    before = tree_hashes(bank_dir)
    adapter = ["--adapter", tmp_path / "seqcls", "--examples", examples]
    for args, message in (
            (adapter, "pass --labels with the 2 label names"),
            ([*adapter, "--labels", "d_one,d_two,d_three"], "--labels: 3 name(s); the classifier has 2 outputs"),
            ([*adapter, "--labels", "d_two,d_one", "--examples", one_label], "no examples of label(s) d_two"),
            (["--adapter", tmp_path / "lower", "--examples", examples, "--labels", "d_two,d_one"],
             f"train with layers_to_transform={list(upper)}"),
            (["--adapter", tmp_path / "headless", "--examples", examples, "--labels", "d_two,d_one"], "no classifier head")):
        code, _ = invoke("import", bank_dir, "delta", *args, "--device", DEVICE)
        assert code == 1 and message in invoke.stderr and invoke.stderr.count("\n") == 1, invoke.stderr
    assert tree_hashes(bank_dir) == before

    code, out = invoke("import", bank_dir, "delta", *adapter, "--labels", ",".join(labels), "--device", DEVICE)
    assert code == 0 and "imported delta: lora" in out and "2 labels, accuracy on the examples 1.000" in out, invoke.stderr
    assert verify_bank(bank_dir).ok
    bank = AdapterBank.open(bank_dir, device=DEVICE)
    forced = bank.predict(test, task="delta", top_labels=2, label_weight=0)  # the module alone
    for prediction, probabilities in zip(forced, expected.tolist()):  # the bank answers as the PEFT model did
        assert {label: p for label, _, p in prediction.labels} == pytest.approx(dict(zip(labels, probabilities)), abs=1e-4)
    routed = bank.predict(test, ood_quantile=0)
    assert [p.task for p in routed] == ["delta"] * len(test)
    assert [p.label for p in routed] == [labels[i] for i in expected.argmax(-1).tolist()]


def test_a_module_exported_by_a_bank_imports_back(classifier_template, tmp_path):
    """export --peft writes the module with its head and labels; import in another bank answers the same."""
    from adapterbank import AdapterBank

    source = copy_bank(classifier_template, tmp_path / "source")
    target = copy_bank(classifier_template, tmp_path / "target")
    texts = [row["text"] for row in synthetic_rows("alpha", per_label=6, seed=2)]
    expected = AdapterBank.open(source, device=DEVICE).predict(texts, task="alpha", top_labels=2, label_weight=0)
    assert invoke("export", source, "--task", "alpha", "--peft", "--out", tmp_path / "alpha")[0] == 0, invoke.stderr
    assert json.loads((tmp_path / "alpha" / "labels.json").read_text())["labels"] == TASK_LABELS["alpha"]
    examples = write_jsonl(tmp_path / "alpha.jsonl", synthetic_rows("alpha", per_label=8, seed=3))
    assert invoke("remove", target, "alpha")[0] == 0, invoke.stderr
    code, out = invoke("import", target, "alpha", "--adapter", tmp_path / "alpha", "--examples", examples, "--device", DEVICE)
    assert code == 0 and "2 labels" in out, invoke.stderr
    answers = AdapterBank.open(target, device=DEVICE).predict(texts, task="alpha", top_labels=2, label_weight=0)
    for got, want in zip(answers, expected):
        assert got.label == want.label and [p for *_, p in got.labels] == pytest.approx([p for *_, p in want.labels], abs=1e-5)
