"""Crash safety and concurrent writers, with real processes: SIGKILL at named points of add-task
(adapterbank/faults.py), and two add-task processes racing on one bank."""

import os
import signal
import subprocess
import sys

import pytest

from adapterbank import AdapterBank

from conftest import synthetic_rows, write_jsonl

# every moment of an add-task that writes something, plus training steps spread over the run (nothing is
# written while training, so a few steps stand for all: each kill is a fresh ~6 s process)
TRAINING = ["lower-pass"] + [f"train-step-{n}" for n in (1, 8, 21, 40)] + ["trained"]
SAVING = ["saved-module", "saved-head", "saved-router", "hashed", "locked", "manifest-written"]
AFTER_PUBLISH = ["renamed", "index-written", "index-replaced"]  # the task is complete on disk by then
POINTS = TRAINING + SAVING + AFTER_PUBLISH


def add_task_process(bank, name, train, kill_at=None, epochs=6):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("ADAPTERBANK_KILL_AT", None)
    if kill_at:
        env["ADAPTERBANK_KILL_AT"] = kill_at
    command = [sys.executable, "-m", "adapterbank_cli", "add-task", str(bank), name, "--train", str(train),
               "--epochs", str(epochs), "--device", "cpu", "-q"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture()
def bank_and_data(tmp_path, tiny_base):
    bank = AdapterBank.create(tmp_path / "bank", base=tiny_base, device="cpu")
    train = write_jsonl(tmp_path / "train.jsonl", synthetic_rows("alpha", per_label=48, seed=0))  # 96 texts: 3 steps/epoch
    bank.add_task("first", train, epochs=2, progress=False)
    return bank.path, train


def test_sigkill_at_every_point_leaves_a_working_bank(bank_and_data):
    bank_dir, train = bank_and_data
    assert len(POINTS) >= 15
    landed = ["first"]
    for number, point in enumerate(POINTS):
        name = f"k{number:02d}"
        process = add_task_process(bank_dir, name, train, kill_at=point, epochs=14)  # 42 steps
        _, err = process.communicate(timeout=300)
        assert process.returncode == -signal.SIGKILL, f"{point}: not killed (exit {process.returncode}): {err[-400:]}"
        if point in AFTER_PUBLISH:
            landed.append(name)
        bank = AdapterBank.open(bank_dir, device="cpu")
        assert [t.name for t in bank.tasks()] == landed, point
        assert bank.verify().problems == [], point
        # every text answered (out of scope off: these two-word texts are far shorter than the training texts)
        assert all(p.label is not None for p in bank.predict(["aaaaaa bcd", "bbbbbb cde"], ood_quantile=0)), point
    # a normal add-task after all that works and sweeps the dead writers' temp directories away
    bank.add_task("after", train, epochs=2, progress=False)
    assert [t.name for t in bank.tasks()] == landed + ["after"]
    assert not [p.name for p in (bank_dir / "tasks").iterdir() if p.name.startswith(".")]


def test_two_writers_with_different_names_both_land(bank_and_data, tmp_path):
    bank_dir, train = bank_and_data
    delta = write_jsonl(tmp_path / "delta.jsonl", synthetic_rows("delta", per_label=32, seed=0))
    beta = write_jsonl(tmp_path / "beta.jsonl", synthetic_rows("beta", per_label=32, seed=0))
    processes = [add_task_process(bank_dir, "one", delta), add_task_process(bank_dir, "two", beta)]
    results = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], results
    bank = AdapterBank.open(bank_dir, device="cpu")
    assert sorted(t.name for t in bank.tasks()) == ["first", "one", "two"]
    assert bank.verify().problems == []
    # both modules landed whole: each one's texts route to it and get its labels
    predictions = bank.predict(["ssssss tuv", "gggggg hij", "aaaaaa bcd"], ood_quantile=0)
    assert [p.task for p in predictions] == ["one", "two", "first"]
    assert [p.label for p in predictions] == ["d_one", "b_one", "a_one"]


def test_two_writers_with_the_same_name_one_lands_one_is_told(bank_and_data):
    bank_dir, train = bank_and_data
    processes = [add_task_process(bank_dir, "same", train), add_task_process(bank_dir, "same", train)]
    results = [p.communicate(timeout=300) for p in processes]
    codes = sorted(p.returncode for p in processes)
    assert codes == [0, 1], results
    loser = results[[p.returncode for p in processes].index(1)][1]
    assert "already exists" in loser and "Traceback" not in loser
    bank = AdapterBank.open(bank_dir, device="cpu")
    assert [t.name for t in bank.tasks()] == ["first", "same"]
    assert bank.verify().problems == []
