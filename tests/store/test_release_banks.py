"""Banks written by release 0.1.0 (tests/fixtures/make_release_banks.py) open in this one, answer as they
did, verify clean and take new work. No migration is needed: bank.json gained an optional `family`
field (absent: told apart by the base versions) and task.json an optional `config`."""

import json
import shutil
from pathlib import Path

import pytest

from adapterbank import AdapterBank, CausalBank, ClassifierBank, verify_bank

from conftest import synthetic_rows, tree_hashes, write_jsonl

RELEASE = Path(__file__).resolve().parents[1] / "fixtures" / "release-0.1.0"


@pytest.fixture()
def release(tmp_path) -> Path:
    shutil.copytree(RELEASE, tmp_path / "release")
    return tmp_path / "release"


def expected() -> dict:
    return json.loads((RELEASE / "expected.json").read_text(encoding="utf-8"))


def test_a_release_classification_bank_opens_predicts_the_same_and_learns(release, tmp_path):
    before = tree_hashes(release / "classifier")
    bank = AdapterBank.open(release / "classifier", base=str(release / "tiny-bert"), device="cpu")
    assert isinstance(bank, ClassifierBank) and "family" not in json.loads((release / "classifier" / "bank.json").read_text())
    assert verify_bank(bank.path).ok
    assert [(t.name, t.kind) for t in bank.tasks()] == [("alpha", "lora"), ("beta", "prompt"), ("gamma", None)]
    answers = [p.to_dict() for p in bank.predict(expected()["texts"], ood_quantile=0)]
    for got, want in zip(answers, expected()["predictions"]):
        assert (got["label"], got["task"]) == (want["label"], want["task"])
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)
    assert {k: v for k, v in tree_hashes(release / "classifier").items() if k != "router_index.safetensors"} == before
    train = write_jsonl(tmp_path / "beta.jsonl", synthetic_rows("beta", per_label=8, seed=3))
    bank.add_task("new", train, epochs=2, progress=False)
    assert [t.name for t in bank.tasks()][-1] == "new" and verify_bank(bank.path).ok


def test_a_release_causal_bank_generates_the_same_and_merges(release):
    bank = AdapterBank.open(release / "causal", device="cpu")
    assert isinstance(bank, CausalBank) and bank.current_base_version == "v1"
    assert verify_bank(bank.path).ok
    assert [v["version"] for v in bank.base_versions()] == ["v0", "v1"]
    want = expected()
    for name, text in want["forced_generation"].items():
        assert bank.generate(want["prompts"][:1], max_new_tokens=6, task=name)[0].text == text
    assert bank.generate(want["prompts"][:1], max_new_tokens=6, task="beta")[0].to_dict() == want["beta_after_merge"]
    bank.rollback("v0")  # (routing and new tasks need the router encoder, a temp model gone since the release)
    record = bank.merge(["beta"], method="ties")
    assert record["version"] == "v2" and record["lineage"]["parent"] == "v0" and bank.current_base_version == "v2"
    assert verify_bank(bank.path).ok
