"""Hostile data: any bytes give a dataset or one clear DataError; huge lines, files and label sets are bounded."""

import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapterbank import AdapterBank
from adapterbank.data import MAX_LABELS_PER_TASK, load_dataset, load_texts
from adapterbank.errors import DataError, InvalidNameError
from adapterbank.store.registry import validate_task_name

from conftest import tree_hashes

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _load_or_clear_error(path, loader=load_dataset):
    try:
        result = loader(path)
    except DataError as exc:
        message = str(exc)
        assert message and "\n" not in message and str(path) in message
        return None
    return result


def _check_dataset(data):
    assert len(data) >= 1 and len(data.texts) == len(data.targets)
    assert all(isinstance(t, str) and t.strip() for t in data.texts)
    assert all(isinstance(y, str) and y.strip() == y and y for y in data.targets)


@FUZZ
@given(raw=st.binary(max_size=400), suffix=st.sampled_from([".jsonl", ".csv", ".json"]))
def test_any_bytes_give_a_dataset_or_one_clear_error(tmp_path, raw, suffix):
    path = tmp_path / f"data{suffix}"
    path.write_bytes(raw)
    data = _load_or_clear_error(path)
    if data is not None:
        _check_dataset(data)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                           max_leaves=6)
records = st.dictionaries(st.sampled_from(["text", "label", "other"]), json_values, max_size=3) | json_values


@FUZZ
@given(rows=st.lists(records, min_size=0, max_size=6))
def test_any_json_lines_give_a_dataset_or_one_clear_error(tmp_path, rows):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    data = _load_or_clear_error(path)
    if data is not None:
        _check_dataset(data)


@FUZZ
@given(raw=st.binary(max_size=300))
def test_any_bytes_as_texts_to_predict(tmp_path, raw):
    path = tmp_path / "texts.txt"
    path.write_bytes(raw)
    result = _load_or_clear_error(path, load_texts)
    if result is not None:
        texts, labels = result
        assert texts and labels is None and all(t.strip() for t in texts)


@given(name=st.text(max_size=80))
def test_any_task_name_is_safe_or_refused(name):
    try:
        validate_task_name(name)
    except InvalidNameError:
        return
    assert "/" not in name and "\\" not in name and ".." not in name and not name.startswith(".")
    assert 1 <= len(name) <= 64 and name.isascii()


def test_a_ten_megabyte_line_fails_fast_naming_the_line(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text('{"text": "ok", "label": "a"}\n' + json.dumps({"text": "x" * (10 << 20), "label": "a"}) + "\n")
    with pytest.raises(DataError, match=r"big.jsonl:2: 10,485,7\d\d bytes in one example"):
        load_dataset(path)


def test_a_million_lines_load_in_bounded_memory(tmp_path):
    path = tmp_path / "million.jsonl"
    with open(path, "w") as handle:
        for i in range(1_000_000):
            handle.write(f'{{"text": "text number {i}", "label": "l{i % 7}"}}\n')
    size_mb = path.stat().st_size / 2**20
    script = ("import resource, sys; from adapterbank.data import load_dataset; "
              "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; d = load_dataset(sys.argv[1]); "
              "print(len(d), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)")
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) == 1_000_000
    assert float(out[1]) < 12 * size_mb + 100, f"{out[1]} MB for a {size_mb:.0f} MB file"


def test_too_many_labels_fail_before_any_training(tmp_path, tiny_base):
    bank = AdapterBank.create(tmp_path / "bank", base=tiny_base, device="cpu")
    before = tree_hashes(bank.path)
    path = tmp_path / "labels.jsonl"
    count = 10 * MAX_LABELS_PER_TASK
    path.write_text("".join(f'{{"text": "t{i}", "label": "label-{i}"}}\n' for i in range(count)))
    with pytest.raises(DataError, match=r"100,000 distinct labels; a task holds at most 10,000"):
        bank.add_task("many", path, progress=False)
    assert tree_hashes(bank.path) == before
