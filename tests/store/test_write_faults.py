"""File-system faults at every write of add-task, merge and remove: a real full disk (a small tmpfs filled
to leave each amount of free space in turn, so the failure lands on each write in turn), a real read-only
file system (the tmpfs remounted read-only), and EROFS injected at each named point of the write paths.
Each must end in one AdapterBankError line, leave every byte of the bank as it was (or the operation
complete), and leave the bank answering.

Mounting needs root (CI runs as root); elsewhere the tmpfs tests skip and the injected ones still run."""

import errno
import gc
import hashlib
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

import adapterbank.faults as faults
from adapterbank import AdapterBank
from adapterbank.errors import AdapterBankError, StorageError
from adapterbank.store.verify import verify_bank

from conftest import copy_bank, synthetic_rows

GAMMA = synthetic_rows("delta", per_label=6, seed=0)
ADD = dict(epochs=1, progress=False)
PAGE = 4096


def snapshot(root: Path) -> dict[str, str]:
    """Every file's sha256 and every directory, by relative path: a leftover empty directory counts too."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(root.rglob("*"))}


@pytest.fixture()
def tmpfs(tmp_path):
    """A 16 MB tmpfs (skips unless this process may mount one)."""
    mount = tmp_path / f"fs-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["mount", "-o", "remount,rw", str(mount)], capture_output=True)
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def fill(mount: Path, leave: int) -> Path:
    """A filler file that leaves `leave` bytes free on the tmpfs. Banks opened before may still map files
    deleted since (safetensors memory-maps them) until the garbage collector drops those objects: their pages
    would be freed in the middle of the next operation and give it room the filler meant to take."""
    gc.collect()
    filler = mount / "filler"
    size = free_bytes(mount) - leave
    if size > 0:
        with open(filler, "wb") as handle:
            os.posix_fallocate(handle.fileno(), 0, size)
    return filler


def classifier_op(bank_dir: Path):
    return AdapterBank.open(bank_dir, device="cpu").add_task("delta", GAMMA, **ADD)


def merge_op(bank_dir: Path):
    return AdapterBank.open(bank_dir, device="cpu").merge(["alpha"])


def still_answers(bank_dir: Path) -> None:
    bank = AdapterBank.open(bank_dir, device="cpu")
    if bank.family == "classifier":
        assert bank.predict(["aaaaaa bc de"], ood_quantile=0)[0].task == "alpha"
    else:
        assert len(bank.generate(["abc fed"], max_new_tokens=2)) == 1
    assert verify_bank(bank_dir).ok, verify_bank(bank_dir).problems


def run_expecting_clean_outcome(bank_dir: Path, operation) -> str:
    """'done' (the operation completed: verify passes) or 'refused' (one-line StorageError, bank unchanged)."""
    before = snapshot(bank_dir)
    try:
        operation(bank_dir)
    except AdapterBankError as exc:
        assert isinstance(exc, StorageError), repr(exc)
        assert "\n" not in str(exc) and str(bank_dir) in str(exc), str(exc)
        assert snapshot(bank_dir) == before
        return "refused"
    assert verify_bank(bank_dir).ok
    return "done"


@pytest.mark.parametrize("template, operation", [("classifier_template", classifier_op), ("causal_template", merge_op)],
                         ids=["add-task", "merge"])
def test_disk_full_at_every_write_leaves_the_bank_as_it_was(request, tmpfs, template, operation):
    source = request.getfixturevalue(template)
    probe = copy_bank(source, tmpfs / "probe")
    gc.collect()
    used = free_bytes(tmpfs)
    operation(probe)
    gc.collect()
    need = used - free_bytes(tmpfs)
    shutil.rmtree(probe)
    step = max(PAGE, (need // 14) // PAGE * PAGE)
    outcomes = []
    for leave in range(0, need + 2 * step, step):
        bank_dir = copy_bank(source, tmpfs / f"bank-{leave}")
        filler = fill(tmpfs, leave)
        outcomes.append(run_expecting_clean_outcome(bank_dir, operation))
        still_answers(bank_dir)
        filler.unlink(missing_ok=True)
        shutil.rmtree(bank_dir)
    print(f"{operation.__name__}: {need:,} bytes written; free space 0..{leave:,} in steps of {step:,}: {outcomes}")
    assert outcomes[0] == "refused" and outcomes[-1] == "done" and outcomes.count("refused") >= 3, outcomes


def test_read_only_file_system_refuses_add_merge_and_remove_in_one_line(classifier_template, causal_template, tmpfs):
    banks = {"classifier": copy_bank(classifier_template, tmpfs / "c"), "causal": copy_bank(causal_template, tmpfs / "lm")}
    before = {name: snapshot(path) for name, path in banks.items()}
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    operations = [(banks["classifier"], classifier_op), (banks["causal"], merge_op),
                  (banks["classifier"], lambda b: AdapterBank.open(b, device="cpu").remove_task("alpha")),
                  (banks["causal"], lambda b: AdapterBank.open(b).rollback("v0"))]
    for bank_dir, operation in operations:
        with pytest.raises(StorageError, match="Read-only file system") as caught:
            operation(bank_dir)
        assert "\n" not in str(caught.value)
    assert {name: snapshot(path) for name, path in banks.items()} == before
    for path in banks.values():
        still_answers(path)


ADD_POINTS = ["saved-module", "saved-head", "saved-router", "hashed", "locked", "manifest-written"]
MERGE_POINTS = ["base-saved", "base-renamed"]


@pytest.mark.parametrize("point", ADD_POINTS + MERGE_POINTS + ["index-written"])
def test_erofs_injected_at_each_write_point(classifier_template, causal_template, tmp_path, monkeypatch, point):
    merge = point in MERGE_POINTS
    bank_dir = copy_bank(causal_template if merge else classifier_template, tmp_path / "bank")
    before = snapshot(bank_dir)

    def fail_at(name: str) -> None:
        if name == point:
            raise OSError(errno.EROFS, "Read-only file system", str(bank_dir))

    monkeypatch.setattr(faults, "point", fail_at)
    operation = merge_op if merge else lambda b: AdapterBank.open(b, device="cpu").add_task(
        "delta", GAMMA, **ADD)
    if point == "index-written":  # after the task landed: the index is derived, so a warning, not a failure
        with pytest.warns(match="router index was not saved"):
            operation(bank_dir)
        assert "delta" in [t.name for t in AdapterBank.open(bank_dir).tasks()]
    else:
        with pytest.raises(StorageError, match="Read-only file system"):
            operation(bank_dir)
        assert snapshot(bank_dir) == before
    monkeypatch.undo()
    still_answers(bank_dir)
    # and the same operation succeeds once the file system is writable again
    if point != "index-written":
        (merge_op if merge else classifier_op)(bank_dir)
        assert verify_bank(bank_dir).ok


def test_remove_on_a_full_disk_still_removes(classifier_template, tmpfs):
    bank_dir = copy_bank(classifier_template, tmpfs / "bank")
    fill(tmpfs, 0)
    AdapterBank.open(bank_dir, device="cpu").remove_task("beta")
    assert [t.name for t in AdapterBank.open(bank_dir).tasks()] == ["alpha"]
    still_answers(bank_dir)
