import json
import os

import pytest

from adapterbank.errors import BankError, InvalidNameError, TaskExistsError, TaskNotFoundError
from adapterbank.store.registry import Registry, sha256_file, validate_task_name

from conftest import tree_hashes


@pytest.fixture()
def registry(tmp_path):
    return Registry.create(tmp_path / "bank", {"base": {"id": "some/model", "fingerprint": "sha256:0"}})


def add(registry, name, payload=b"weights"):
    with registry.stage_task(name, {"labels": ["x"]}) as staging:
        (staging / "a.safetensors").write_bytes(payload)


@pytest.mark.parametrize("name", ["", "../x", "a/b", "a\\b", ".hidden", "..", "x" * 65, "con", "tasks", "a b", "é", "-x", "a..b"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(InvalidNameError, match="invalid task name"):
        validate_task_name(name)


@pytest.mark.parametrize("name", ["intent", "clinc-banking_v2", "T1", "a.b", "x" * 64])
def test_safe_names_pass(name):
    assert validate_task_name(name) == name


def test_create_refuses_non_empty_path_and_open_checks_manifest(tmp_path, registry):
    with pytest.raises(BankError, match="already exists"):
        Registry.create(registry.root, {"base": {"id": "m"}})
    with pytest.raises(BankError, match="no such bank"):
        Registry.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(BankError, match="not a bank"):
        Registry.open(tmp_path / "plain")
    manifest = json.loads((registry.root / "bank.json").read_text())
    (registry.root / "bank.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(BankError, match="unsupported format_version 99"):
        Registry.open(registry.root)
    (registry.root / "bank.json").write_text("{not json")
    with pytest.raises(BankError, match="bank.json: not valid JSON"):
        Registry.open(registry.root)


def test_staged_task_is_published_with_checksums_and_order(registry):
    add(registry, "first", b"1")
    add(registry, "second", b"2")
    assert registry.task_names() == ["first", "second"]
    record = registry.read_task("second")
    assert record["sequence"] == 2 and record["labels"] == ["x"]
    path = registry.task_dir("second") / "a.safetensors"
    assert record["files"] == {"a.safetensors": sha256_file(path)}
    assert sorted(p.name for p in registry.tasks_dir.iterdir()) == ["first", "second"]


def test_failure_while_staging_leaves_bank_exactly_as_it_was(registry):
    add(registry, "kept")
    before = tree_hashes(registry.root)
    with pytest.raises(RuntimeError):
        with registry.stage_task("broken", {"labels": ["x"]}) as staging:
            (staging / "half.safetensors").write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert registry.task_names() == ["kept"]
    assert tree_hashes(registry.root) == before


def test_existing_name_is_refused_before_and_at_publish(registry):
    add(registry, "dup")
    with pytest.raises(TaskExistsError, match="already exists"):
        add(registry, "dup")
    with pytest.raises(TaskExistsError):
        with registry.stage_task("late", {}) as staging:
            (staging / "f.json").write_text("{}")
            add(registry, "late")  # a concurrent writer wins the race
    assert registry.task_names() == ["dup", "late"]


def test_remove_and_unknown_task(registry):
    add(registry, "gone")
    registry.remove_task("gone")
    assert registry.task_names() == []
    assert list(registry.tasks_dir.iterdir()) == []
    with pytest.raises(TaskNotFoundError, match="no task named 'gone'"):
        registry.remove_task("gone")


def test_stale_temp_dirs_of_dead_writers_are_cleaned(registry):
    dead = registry.tasks_dir / ".tmp-x-999999999-abcd1234"
    live = registry.tasks_dir / f".tmp-y-{os.getpid()}-abcd1234"
    dead.mkdir()
    live.mkdir()
    add(registry, "next")
    assert not dead.exists() and live.exists()
    assert registry.task_names() == ["next"]
