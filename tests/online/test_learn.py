"""Online learning: answers at every moment, modules from the stream, nothing lost or learned twice when a
`learn` is killed, malformed lines reported by number, memory bounded by the pool."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys

import pytest

from conftest import DEVICE, invoke, synthetic_rows, write_jsonl


def _rows(*tasks, per_label=40, seed=0):
    rows = [row for task in tasks for row in synthetic_rows(task, per_label=per_label, seed=seed)]
    random.Random(seed).shuffle(rows)
    return rows


@pytest.fixture()
def empty_bank(tmp_path, tiny_base):
    from adapterbank import AdapterBank

    return AdapterBank.create(tmp_path / "bank", base=tiny_base, device=DEVICE)


def test_labels_answer_from_their_first_examples_then_become_a_module(empty_bank, tmp_path):
    from adapterbank import AdapterBank

    rows = _rows("alpha", "beta")  # 5 labels x 40, blurry: all labels arrive together
    test = synthetic_rows("alpha", per_label=6, seed=1) + synthetic_rows("beta", per_label=6, seed=1)
    stream = write_jsonl(tmp_path / "stream.jsonl", rows[:50])
    summary = empty_bank.learn(stream, min_per_label=30, epochs=3)
    assert (summary.lines, summary.examples, summary.tasks, summary.pending) == (50, 50, [], 50)
    answers = empty_bank.predict([row["text"] for row in test])
    assert all(a.task == f"pending:{a.label}" for a in answers)  # the router alone answers, from the pool
    assert sum(a.label == row["label"] for a, row in zip(answers, test)) >= 0.8 * len(test)

    write_jsonl(tmp_path / "stream.jsonl", rows)  # the file grew: the 50 consumed lines are skipped
    summary = empty_bank.learn(stream, min_per_label=30, epochs=3)
    assert summary.resumed_after == 50 and summary.lines == 150 and summary.tasks[0] == "online-001"
    learned = sum(empty_bank.task(name).record["data"]["train_examples"] for name in summary.tasks)
    assert learned + summary.covered + summary.pending == 200  # every line once
    reopened = AdapterBank.open(empty_bank.path, device=DEVICE)
    answers = reopened.predict([row["text"] for row in test])
    assert sum(a.label == row["label"] for a, row in zip(answers, test)) >= 0.8 * len(test)
    assert reopened.verify().ok
    assert reopened.learn(stream).lines == 0  # nothing left to read


def test_hard_boundaries_close_each_task_and_flush_the_last(empty_bank, tmp_path):
    rows = [{**row, "task": task} for task in ("alpha", "beta") for row in synthetic_rows(task, per_label=12, seed=0)]
    stream = write_jsonl(tmp_path / "hard.jsonl", rows)
    summary = empty_bank.learn(stream, boundaries="hard", epochs=2)
    assert summary.tasks == ["alpha"] and summary.pending == 36  # beta may still be arriving
    assert sorted(empty_bank.task("alpha").labels) == ["a_one", "a_two"]
    summary = empty_bank.learn(stream, boundaries="hard", flush=True, epochs=2)
    assert summary.tasks == ["beta"] and summary.pending == 0
    answers = empty_bank.predict([row["text"] for row in synthetic_rows("beta", per_label=4, seed=1)])
    assert sum(a.task == "beta" for a in answers) >= 9


def test_malformed_lines_stop_with_their_number_or_are_skipped(empty_bank, tmp_path):
    from adapterbank.online.pool import load_pool

    rows = [json.dumps(row) for row in synthetic_rows("alpha", per_label=4, seed=0)]
    lines = rows[:2] + ['{"text": "abc"'] + rows[2:5] + ['{"text": "", "label": "a_one"}'] + rows[5:]
    stream = tmp_path / "bad.jsonl"
    stream.write_text("\n".join(lines) + "\n")
    code, _ = invoke("learn", empty_bank.path, "--stream", stream, "--device", DEVICE)
    assert code == 1 and f"{stream}:3: not valid JSON" in invoke.stderr and invoke.stderr.count("\n") == 1, invoke.stderr
    pool = load_pool(empty_bank.path)
    assert len(pool.examples) == 2 and pool.sources[str(stream.resolve())] == 2  # the lines before it, none of it
    code, out = invoke("learn", empty_bank.path, "--stream", stream, "--on-error", "skip", "--device", DEVICE)
    assert code == 0 and f"skipped {stream}:3" in invoke.stderr and f"{stream}:7: field 'text'" in invoke.stderr
    assert len(load_pool(empty_bank.path).examples) == 8 and "2 skipped" in out
    hard = write_jsonl(tmp_path / "untasked.jsonl", synthetic_rows("alpha", per_label=2, seed=0))
    code, _ = invoke("learn", empty_bank.path, "--stream", hard, "--boundaries", "hard")
    assert code == 1 and f"{hard}:1: field 'task': required with hard boundaries" in invoke.stderr
    code, out = invoke("learn", empty_bank.path, "--purge")
    assert code == 0 and "8 examples" in out and not (empty_bank.path / "pending.safetensors").exists()


def _learn_process(bank, stream, kill_at=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("ADAPTERBANK_KILL_AT", None)
    if kill_at:
        env["ADAPTERBANK_KILL_AT"] = kill_at
    command = [sys.executable, "-m", "adapterbank_cli", "learn", str(bank), "--stream", str(stream), "--min-per-label", "30",
               "--epochs", "2", "--device", "cpu", "-q", "--json"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_base):
    """A stream of 4 labels (a module after the chunk where they reach 30) and the bank an uninterrupted learn leaves."""
    from adapterbank import AdapterBank

    folder = tmp_path_factory.mktemp("uninterrupted")
    stream = write_jsonl(folder / "stream.jsonl", _rows("alpha", "delta", per_label=40))
    reference = AdapterBank.create(folder / "reference", base=tiny_base, device="cpu")
    assert _learn_process(reference.path, stream).returncode == 0
    return stream, reference


# the first pool write; a graduation recorded but its task not written (add-task runs again); the task in but
# the pool not yet told (its examples are dropped)
@pytest.mark.parametrize("point", ["pool-written", "graduation-recorded", "renamed"])
def test_a_killed_learn_resumes_with_nothing_lost_or_learned_twice(uninterrupted, tmp_path, tiny_base, point):
    """Killed at a named point, then run again: the bank ends as an uninterrupted run leaves it."""
    from adapterbank import AdapterBank
    from adapterbank.online.pool import load_pool

    stream, reference = uninterrupted
    bank = AdapterBank.create(tmp_path / "bank", base=tiny_base, device="cpu")
    killed = _learn_process(bank.path, stream, kill_at=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-300:]
    resumed = _learn_process(bank.path, stream)
    assert resumed.returncode == 0, resumed.stderr[-300:]
    want, got = AdapterBank.open(reference.path), AdapterBank.open(bank.path)
    assert [(t.name, t.record["data"]["train_fingerprint"]) for t in got.tasks()] == \
        [(t.name, t.record["data"]["train_fingerprint"]) for t in want.tasks()]
    assert [e["text"] for e in load_pool(bank.path).examples] == [e["text"] for e in load_pool(reference.path).examples]
    assert got.verify().ok


def test_memory_is_bounded_by_the_pool_not_the_stream(tmp_path, tiny_base):
    """The same pending examples inside a stream 10x longer: the traced peak does not grow with the stream;
    and a pool at max_pending turns its best-filled labels into a module."""
    import tracemalloc

    from adapterbank import AdapterBank

    known = synthetic_rows("alpha", per_label=48, seed=0)
    new = [{"text": row["text"], "label": f"new_{row['label']}"} for row in synthetic_rows("delta", per_label=30, seed=0)]

    def peak(lines: int) -> int:
        bank = AdapterBank.create(tmp_path / f"bank-{lines}", base=tiny_base, device="cpu")
        bank.add_task("alpha", known, epochs=1, progress=False)
        rows = [known[i % len(known)] for i in range(lines - len(new))]
        for i, row in enumerate(new):
            rows.insert(i * len(rows) // len(new), row)
        stream = write_jsonl(tmp_path / f"long-{lines}.jsonl", rows)
        tracemalloc.start()
        summary = bank.learn(stream, max_pending=100)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert (summary.lines, summary.examples, summary.pending, summary.tasks) == (lines, 60, 60, [])
        return top

    short, long = peak(2_000), peak(20_000)
    assert long < 1.2 * short, (short, long)
    bank = AdapterBank.open(tmp_path / "bank-2000", device="cpu")
    summary = bank.learn(write_jsonl(tmp_path / "more.jsonl", new * 2), max_pending=100, epochs=1)
    assert summary.tasks == ["online-001"] and summary.pending < 100


def test_a_tampered_pool_is_reported_and_can_be_purged(empty_bank, tmp_path):
    from adapterbank.errors import IntegrityError

    empty_bank.learn(synthetic_rows("alpha", per_label=4, seed=0))
    assert empty_bank.verify().ok and empty_bank.predict(["aaaaaa bcd"])[0].task.startswith("pending:")
    pool = empty_bank.path / "pending.safetensors"
    data = bytearray(pool.read_bytes())
    data[-3] ^= 0xFF  # a flipped bit in the features
    pool.write_bytes(bytes(data))
    report = empty_bank.verify()
    assert not report.ok and "pending pool was edited or damaged" in report.problems[0]
    with pytest.raises(IntegrityError, match="learn BANK --purge"):
        empty_bank.predict(["aaaaaa bcd"])
    code, out = invoke("learn", empty_bank.path, "--purge")
    assert code == 0 and empty_bank.verify().ok
    code, _ = invoke("learn", empty_bank.path)
    assert code == 1 and "--stream FILE" in invoke.stderr


def test_examples_of_covered_labels_move_their_router_statistics_exactly(empty_bank, tmp_path):
    """Streamed examples of a module's labels end in the router as if they had been in the task's data:
    class means exactly, the shared scatter up to the stored covariance's rounding; the task's files are untouched."""
    import torch

    from adapterbank.routing.statistics import class_statistics
    from conftest import tree_hashes

    first, later = synthetic_rows("alpha", per_label=12, seed=0), synthetic_rows("alpha", per_label=20, seed=5)
    empty_bank.add_task("alpha", first, epochs=1, progress=False)
    files = tree_hashes(empty_bank.path / "tasks")
    summary = empty_bank.learn(later)
    assert (summary.covered, summary.examples, summary.pending) == (40, 0, 0) and tree_hashes(empty_bank.path / "tasks") == files
    records = empty_bank._records()
    _, index = empty_bank._with_pending(records, empty_bank._index(records))
    rows = first + later
    labels = empty_bank.task("alpha").labels
    want = class_statistics(empty_bank.router_features([r["text"] for r in rows]), [labels.index(r["label"]) for r in rows], 2)
    assert torch.allclose(index.t["means"], want["means"], atol=1e-4)
    assert float(index.t["total"]) == len(rows)
    scatter = want["covariance"].double() * len(rows)
    assert float((index.t["scatter"] - scatter).norm() / scatter.norm()) < 0.02
    assert _routes_alike(empty_bank, [r["text"] for r in later])


def _routes_alike(bank, texts) -> bool:
    """Another process's view (a fresh open) routes the same way as the learner's bank object."""
    from adapterbank import AdapterBank

    again = AdapterBank.open(bank.path, device="cpu")
    return [r.tasks for r in again.route(texts)] == [r.tasks for r in bank.route(texts)]


def test_a_quiet_pipe_is_taken_in_without_waiting_for_a_full_chunk(empty_bank):
    """`tail -f FILE | adapterbank learn BANK --stream -`: lines that came are answered from after a quiet second."""
    import time

    from adapterbank.online.pool import load_pool

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "adapterbank_cli", "learn", str(empty_bank.path), "--stream", "-",
                                "--device", "cpu", "-q"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=env)
    try:
        process.stdin.write("".join(json.dumps(r) + "\n" for r in synthetic_rows("alpha", per_label=3, seed=0)).encode())
        process.stdin.flush()
        deadline, taken = time.monotonic() + 60, 0
        while time.monotonic() < deadline and taken < 6:  # bounded: 60 s at most
            time.sleep(0.5)
            taken = len(load_pool(empty_bank.path).examples) if (empty_bank.path / "pending.safetensors").exists() else 0
        assert taken == 6 and process.poll() is None  # taken in while the stream is still open
        process.stdin.write(b'{"text": "ab cd"}\n')
        process.stdin.close()
        assert process.wait(timeout=60) == 1
        assert "<stdin>:7: field 'label'" in process.stderr.read().decode()
    finally:
        if process.poll() is None:
            process.kill()


def test_one_learn_at_a_time_and_settings_checked_before_reading(empty_bank, tmp_path):
    from adapterbank.store.pending import learn_lock

    stream = write_jsonl(tmp_path / "s.jsonl", synthetic_rows("alpha", per_label=2, seed=0))
    with learn_lock(empty_bank.path):
        code, _ = invoke("learn", empty_bank.path, "--stream", stream)
    assert code == 1 and "another `learn` is writing" in invoke.stderr and invoke.stderr.count("\n") == 1
    code, _ = invoke("learn", empty_bank.path, "--stream", stream, "--lr", "nan")
    assert code == 1 and "lr" in invoke.stderr and not (empty_bank.path / "pending.safetensors").exists()
    assert invoke("learn", empty_bank.path, "--stream", stream)[0] == 0 and empty_bank.verify().ok
