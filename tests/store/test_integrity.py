"""Tamper evidence: damaged, edited or swapped bank files are named on load and by `verify`."""

import json
import shutil

import pytest

from adapterbank import AdapterBank
from adapterbank.errors import IntegrityError
from adapterbank.store.registry import INDEX_FILE

from conftest import tree_hashes
from conftest import invoke

FAST = {"epochs": 4, "progress": False}


@pytest.fixture()
def two_tasks(tmp_path, tiny_base, task_files):
    bank = AdapterBank.create(tmp_path / "bank", base=tiny_base, device="cpu")
    bank.add_task("alpha", task_files["alpha"][0], **FAST)
    bank.add_task("beta", task_files["beta"][0], **FAST)
    return bank.path


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_bit(path):
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x01  # inside the tensor data, past the safetensors header
    path.write_bytes(bytes(data))


def _swap(path):
    other = path.parents[1] / ("beta" if path.parent.name == "alpha" else "alpha") / path.name
    a, b = path.read_bytes(), other.read_bytes()
    path.write_bytes(b)
    other.write_bytes(a)


@pytest.mark.parametrize("filename", ["adapter_model.safetensors", "head.safetensors", "router.safetensors"])
@pytest.mark.parametrize("damage", [_truncate, _flip_bit, _swap])
def test_damaged_task_file_is_named_on_load_and_by_verify(two_tasks, filename, damage):
    target = two_tasks / "tasks" / "alpha" / filename
    damage(target)
    (two_tasks / INDEX_FILE).unlink()  # make predict read the router statistics again
    bank = AdapterBank.open(two_tasks, device="cpu")
    with pytest.raises(IntegrityError, match=rf"alpha/{filename}: sha256 mismatch"):
        bank.predict(["aaaaaa bcd", "gggggg hij"])
    code, out = invoke("verify", two_tasks)
    assert code == 1 and f"alpha/{filename}: sha256 mismatch" in invoke.stderr
    if damage is _swap:
        assert f"beta/{filename}: sha256 mismatch" in invoke.stderr


def test_edited_manifests_are_refused(two_tasks):
    manifest = two_tasks / "bank.json"
    edited = json.loads(manifest.read_text())
    edited["router"]["ood_quantile"] = 0.5
    manifest.write_text(json.dumps(edited))
    with pytest.raises(IntegrityError, match=r"bank.json: checksum mismatch"):
        AdapterBank.open(two_tasks, device="cpu")

    task_manifest = two_tasks / "tasks" / "beta" / "task.json"
    edited = json.loads(task_manifest.read_text())
    edited["labels"] = list(reversed(edited["labels"]))  # would silently mislabel every prediction
    task_manifest.write_text(json.dumps(edited))
    code, _ = invoke("verify", two_tasks)
    assert code == 1
    assert "bank.json: checksum mismatch" in invoke.stderr and "beta/task.json: checksum mismatch" in invoke.stderr


def test_intact_bank_verifies_and_a_damaged_index_is_rebuilt(two_tasks):
    code, out = invoke("verify", two_tasks)
    assert code == 0 and "2 tasks" in out
    bank = AdapterBank.open(two_tasks, device="cpu")
    expected = [p.label for p in bank.predict(["aaaaaa bcd", "gggggg hij"])]
    _flip_bit(two_tasks / INDEX_FILE)  # derived data: never trusted, rebuilt from the task files
    again = AdapterBank.open(two_tasks, device="cpu")
    assert [p.label for p in again.predict(["aaaaaa bcd", "gggggg hij"])] == expected
    assert invoke("verify", two_tasks)[0] == 0


def test_stray_file_in_a_task_is_reported(two_tasks):
    shutil.copy(two_tasks / "tasks" / "alpha" / "head.safetensors", two_tasks / "tasks" / "alpha" / "adapter_model.bin")
    before = tree_hashes(two_tasks)
    code, _ = invoke("verify", two_tasks)
    assert code == 1 and "alpha/adapter_model.bin: not part of the task" in invoke.stderr
    assert tree_hashes(two_tasks) == before  # verify only reads
