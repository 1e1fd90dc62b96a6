"""`verify_bank`: what does not match or does not belong is a problem; leftovers of interrupted writers are notes."""

import json

import pytest

from adapterbank import verify_bank
from adapterbank.store.registry import Registry
from adapterbank.store.versions import first_version


@pytest.fixture()
def bank(tmp_path):
    registry = Registry.create(tmp_path / "bank", {"base": {"id": "m", "fingerprint": "sha256:0"}, "router": {}})
    with registry.stage_task("alpha", {"labels": ["x"]}) as staging:
        (staging / "a.safetensors").write_bytes(b"weights")
    return registry.root


def test_an_intact_bank_verifies(bank):
    report = verify_bank(bank)
    assert report.ok and report.tasks == 1 and report.notes == []


def test_stray_files_are_problems_and_verify_never_crashes_on_them(bank):
    (bank / "tasks" / "notes.txt").write_text("a plain file in tasks/")
    (bank / "copy.json").write_text("{}")
    report = verify_bank(bank)
    assert not report.ok
    assert any("tasks/notes.txt: not a task directory" in p for p in report.problems)
    assert any("copy.json: not part of the bank" in p for p in report.problems)


def test_leftovers_of_interrupted_writers_are_notes_not_problems(bank):
    (bank / "tasks" / ".tmp-beta-999999999-abcd1234").mkdir()
    report = verify_bank(bank)
    assert report.ok and len(report.notes) == 1 and ".tmp-beta-999999999-abcd1234: left by a writer" in report.notes[0]


def test_base_versions_listed_and_unlisted(tmp_path):
    def write(directory):
        (directory / "model.safetensors").write_bytes(b"v0")

    registry = Registry.create(tmp_path / "bank", {"base": {"id": "m"}, "router": {}},
                               fill=lambda staging: first_version(staging, write, "sha256:0", "m"))
    assert verify_bank(registry.root).ok
    (registry.root / "bases" / "v1").mkdir()  # a merge killed after its rename, before bank.json listed it
    report = verify_bank(registry.root)
    assert report.ok and "bases/v1: base version directory not listed" in report.notes[0]
    (registry.root / "bases" / "v0" / "model.safetensors").write_bytes(b"changed")
    assert "v0/model.safetensors: sha256 mismatch" in verify_bank(registry.root).problems[0]


def test_a_damaged_bank_json_is_reported_not_fatal(bank):
    manifest = json.loads((bank / "bank.json").read_text())
    (bank / "bank.json").write_text(json.dumps({**manifest, "router": {"method": "x"}}))
    report = verify_bank(bank)
    assert report.tasks == 1 and any("bank.json: checksum mismatch" in p for p in report.problems)
