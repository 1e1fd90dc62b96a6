"""`eval --online`: the streams' shapes (hard: tasks in order; blurry: spread labels everywhere, groups in
order with overlapping edges) and a whole run through the CLI on the tiny BERT."""

import json
from pathlib import Path

import pytest

from adapterbank.evaluation.online_protocol import build_stream
from adapterbank.evaluation.scenarios import load_scenario

from conftest import TASK_LABELS, invoke, synthetic_rows, write_jsonl

TASKS = ["alpha", "beta", "delta"]


@pytest.fixture()
def flat_data(tmp_path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    write_jsonl(root / "train.jsonl", [r for t in TASKS for r in synthetic_rows(t, per_label=20, seed=0)])
    write_jsonl(root / "test.jsonl", [r for t in TASKS for r in synthetic_rows(t, per_label=5, seed=1)])
    return root


def test_hard_streams_keep_tasks_in_order_and_blurry_streams_mix_them(flat_data):
    tasks = load_scenario(flat_data, n_tasks=3, seed=0)
    hard = build_stream(tasks, "hard", seed=0)
    assert [row["task"] for row in hard] == [t.name for t in tasks for _ in range(len(t.train))]
    blurry = build_stream(tasks, "blurry", seed=0)
    assert sorted(r["text"] for r in blurry) == sorted(r["text"] for r in hard) and "task" not in blurry[0]
    assert build_stream(tasks, "blurry", seed=0) == blurry != build_stream(tasks, "blurry", seed=1)
    thirds = [blurry[i * len(blurry) // 3:(i + 1) * len(blurry) // 3] for i in range(3)]
    spread = {label for label in {r["label"] for r in blurry} if all(label in {r["label"] for r in t} for t in thirds)}
    assert 1 <= len(spread) <= 3  # 10 % of 7 labels spread everywhere; at most edge labels beside them
    for k, task in enumerate(tasks):  # a group's labels live mostly in its own third
        own = [r for r in thirds[k] if r["label"] in set(task.labels) - spread]
        assert len(own) >= 0.6 * sum(1 for r in blurry if r["label"] in set(task.labels) - spread)


@pytest.mark.parametrize("mode", ["hard", "blurry"])
def test_eval_online_writes_the_curve_and_its_measures(flat_data, tiny_base, tmp_path, mode):
    out = tmp_path / f"out-{mode}"
    code, text = invoke("eval", flat_data, "--out", out, "--online", mode, "--tasks", "3", "--points", "4", "--base", tiny_base, "-q")
    assert code == 0, invoke.stderr
    results = json.loads((out / "results.json").read_text())
    assert [p["examples"] for p in results["points"]] == [35, 70, 105, 140]
    assert [p["labels_seen"] for p in results["points"]][-1] == sum(len(TASK_LABELS[t]) for t in TASKS)
    assert 0 <= results["a_auc"] <= 1 and results["a_last"] >= 0.5 and results["modules"] >= (3 if mode == "hard" else 1)
    assert results["a_auc"] == pytest.approx(sum(p["accuracy"] for p in results["points"]) / 4, abs=1e-4)
    assert set(results) >= {"ncm", "offline", "forgetting", "ingest_examples_per_s"}
    assert (out / "accuracy_curve.png").stat().st_size > 0 and "online NCM" in text
    code, _ = invoke("eval", flat_data, "--out", tmp_path / "x", "--online", "sideways")
    assert code == 1 and "--online: one of hard, blurry" in invoke.stderr
