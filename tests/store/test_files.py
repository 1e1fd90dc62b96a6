"""The one write path: atomic files, staged directories published by rename, sweeping dead writers' leftovers."""

import os

import pytest

from adapterbank.errors import BankError, IntegrityError
from adapterbank.store.files import (check_sealed, read_sealed, seal, staging_dir, sweep, write_json_atomic,
                                     write_new_dir)


def test_a_new_directory_appears_whole_or_not_at_all(tmp_path):
    def fill(staging):
        (staging / "a.json").write_text("{}")

    assert sorted(p.name for p in write_new_dir(tmp_path / "out", fill).iterdir()) == ["a.json"]

    def crash(staging):
        (staging / "half.json").write_text("{")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write_new_dir(tmp_path / "other", crash)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no target, no temp directory
    (tmp_path / "empty").mkdir()
    assert write_new_dir(tmp_path / "empty", fill).is_dir()  # an empty directory may be the target
    with pytest.raises(BankError, match="already exists and is not an empty directory; choose a new --out"):
        write_new_dir(tmp_path / "out", fill, what="--out")


def test_sweep_removes_only_dead_writers_leftovers(tmp_path):
    dead = tmp_path / ".tmp-task-x-999999999-abcd1234"
    old_style = tmp_path / ".tmp-999999999-abcd1234"  # bases/ temp names before this release
    trash = tmp_path / ".trash-gone-abcd1234"
    for path in (dead, old_style, trash):
        path.mkdir()
    with staging_dir(tmp_path, "live") as live:
        sweep(tmp_path)
        assert live.exists() and not dead.exists() and not old_style.exists() and not trash.exists()
    assert not live.exists()  # the staging directory is removed when not published


def test_sweep_with_a_label_touches_only_that_label(tmp_path):
    mine, other = tmp_path / ".tmp-out-999999999-aaaaaaaa", tmp_path / ".tmp-else-999999999-bbbbbbbb"
    mine.mkdir()
    other.mkdir()
    sweep(tmp_path, label="out")
    assert not mine.exists() and other.exists()


def test_sealed_manifests_detect_any_edit(tmp_path):
    path = tmp_path / "m.json"
    write_json_atomic(path, seal({"a": 1, "b": [1, 2]}))
    assert read_sealed(path)["b"] == [1, 2]
    path.write_text(path.read_text().replace("2", "3"))
    with pytest.raises(IntegrityError, match="m.json: checksum mismatch"):
        read_sealed(path)
    assert check_sealed(path, seal({"x": "é"}))["x"] == "é"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]
