"""Online learning end to end on the real all-MiniLM-L6-v2: a blurry stream of the demo data, learned
through the CLI, answered at every moment and, at the end, by modules."""

import json
import random

import pytest

from adapterbank import AdapterBank, load_dataset
from adapterbank.demo import demo_data_dir

from conftest import invoke

pytestmark = pytest.mark.integration


def _pairs(split: str) -> list[tuple[str, str]]:
    """The travel and home demo tasks' (text, label) pairs: 8 labels."""
    pairs = []
    for task in ("travel", "home"):
        data = load_dataset(demo_data_dir() / task / f"{split}.jsonl")
        pairs += list(zip(data.texts, data.targets))
    return pairs


def test_minilm_learns_a_blurry_stream(tmp_path):
    rows = [{"text": t, "label": y} for t, y in _pairs("train")]
    random.Random(0).shuffle(rows)
    test = _pairs("test")
    stream = tmp_path / "stream.jsonl"
    stream.write_text("".join(json.dumps(r) + "\n" for r in rows[:40]))
    bank_dir = tmp_path / "bank"
    assert invoke("init", bank_dir, "--device", "cpu")[0] == 0, invoke.stderr
    assert invoke("learn", bank_dir, "--stream", stream, "--min-per-label", "12", "-q", "--device", "cpu")[0] == 0, invoke.stderr
    early = AdapterBank.open(bank_dir, device="cpu").predict([t for t, _ in test])
    assert all(p.task.startswith("pending:") for p in early)  # 40 examples, no module yet: the router answers
    assert sum(p.label == y for p, (_, y) in zip(early, test)) >= 0.7 * len(test)
    stream.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out = invoke("learn", bank_dir, "--stream", stream, "--min-per-label", "12", "--flush", "-q", "--device", "cpu")
    assert code == 0 and "(40 consumed earlier)" in out and "online-001" in out, invoke.stderr
    bank = AdapterBank.open(bank_dir, device="cpu")
    late = bank.predict([t for t, _ in test])
    assert all(p.task.startswith("online-") for p in late) and bank.verify().ok
    assert sum(p.label == y for p, (_, y) in zip(late, test)) >= 0.9 * len(test)
