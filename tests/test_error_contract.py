"""The error contract, one test per defect a new user found (issue "The error contract, everywhere"):
one line naming the file, line or field, a non-zero exit, and the bank exactly as it was.

The harness over every CLI option is tests/cli/test_hostile_options.py; disk-full and read-only faults
at every write are tests/store/test_write_faults.py."""

import json
import shutil
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapterbank import AdapterBank
from adapterbank.core.loop import train
from adapterbank.data import load_dataset, load_texts
from adapterbank.errors import AdapterBankError, AdapterBankWarning, BankError, DataError, IntegrityError
from adapterbank.store.files import write_json_atomic
from adapterbank.store.verify import verify_bank

from conftest import copy_bank, domain_texts, invoke, synthetic_rows, tree_hashes, write_jsonl


def one_line_error(code: int, expected: str) -> None:
    lines = invoke.stderr.strip().splitlines()
    assert code in (1, 2), (code, invoke.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in invoke.stderr, invoke.stderr
    assert expected in lines[0], lines[0]


@pytest.fixture()
def cbank(classifier_template, tmp_path):
    return copy_bank(classifier_template, tmp_path / "bank")


@pytest.fixture()
def lm(causal_template, tmp_path):
    return copy_bank(causal_template, tmp_path / "lm")


# 1 ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("total", range(1, 41))
def test_d01_every_step_count_trains_including_exactly_ten(total):
    weight = torch.nn.Parameter(torch.ones(3))
    result = train([{"params": [weight], "lr": 1e-2}], iter(range(total)), lambda _: ((weight ** 2).sum(), 1, {}), total)
    assert result.steps == total and weight.detach().abs().sum() < 3


def test_d01_add_task_of_exactly_ten_steps(tmp_path, tiny_base, tiny_llama):
    rows = synthetic_rows("alpha", per_label=5, seed=0)  # 10 texts, batch size 1, 1 epoch: 10 steps
    bank = AdapterBank.create(tmp_path / "bank", base=tiny_base, device="cpu")
    info = bank.add_task("alpha", write_jsonl(tmp_path / "a.jsonl", rows), epochs=1, batch_size=1, progress=False)
    assert info.record["metrics"]["train_steps"] == 10
    lm = AdapterBank.create(tmp_path / "lm", base=tiny_llama, router_encoder=tiny_base, device="cpu")
    info = lm.add_task("alpha", domain_texts("alpha", 80, seed=0), block_size=32, max_steps=10, progress=False)
    assert info.record["metrics"]["train_steps"] == 10


# 2 ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1", "1e9"])
def test_d02_a_learning_rate_that_is_not_a_finite_positive_number_is_refused(cbank, tmp_path, value):
    before = tree_hashes(cbank)
    train_file = write_jsonl(tmp_path / "d.jsonl", synthetic_rows("gamma", 4, 0) + synthetic_rows("delta", 4, 0))
    code, _ = invoke("add-task", cbank, "new", "--train", train_file, "--lr", value, "-q")
    one_line_error(code, "lr must be")
    assert tree_hashes(cbank) == before


def test_d02_a_diverging_loss_stops_training_before_anything_is_saved():
    weight = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(AdapterBankError, match="training diverged: the loss is nan at step 3"):
        train([{"params": [weight], "lr": 1e-2}], iter(range(5)),
              lambda step: ((weight * (float("nan") if step == 2 else 1.0)).sum(), 1, {}), 5)


def test_d02_nan_is_never_written_as_json(tmp_path):
    with pytest.raises(IntegrityError, match="not a finite number"):
        write_json_atomic(tmp_path / "x.json", {"metrics": {"loss": float("nan")}})
    assert list(tmp_path.iterdir()) == []


# 3, 11 --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["merge", "{lm}", "--tasks", "alpha", "--weights", "nan"], "weights must be a finite number"),
    (["merge", "{lm}", "--tasks", "alpha", "--weights", "inf"], "weights must be a finite number"),
    (["merge", "{lm}", "--tasks", "alpha", "--seed", "-1"], "seed must be at least 0"),
    (["generate", "{lm}", "--prompt", "abc", "--sample", "--top-p", "0"], "top_p must be positive"),
    (["generate", "{lm}", "--prompt", "abc", "--sample", "--top-p", "nan"], "top_p must be a finite number"),
    (["generate", "{lm}", "--prompt", "abc", "--sample", "--temperature", "0"], "temperature must be positive"),
    (["generate", "{lm}", "--prompt", "abc", "--max-new-tokens", "0"], "max_new_tokens must be at least 1"),
])
def test_d03_d11_merge_and_sampling_values_are_checked_before_any_model_loads(lm, monkeypatch, args, message):
    import adapterbank.core.models as models

    def no_model(*_a, **_k):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(models, "load_causal_checkpoint", no_model)
    monkeypatch.setattr(models, "load_verified", no_model)
    before = tree_hashes(lm)
    code, _ = invoke(*[str(lm) if a == "{lm}" else a for a in args])
    one_line_error(code, message)
    assert tree_hashes(lm) == before


# 4 ------------------------------------------------------------------------------------------------
def test_d04_a_failed_index_write_leaves_the_task_in_and_reads_never_write(cbank, tmp_path, monkeypatch):
    from adapterbank.routing.index import RouterIndex

    def disk_full(self, path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(RouterIndex, "save", disk_full)
    bank = AdapterBank.open(cbank, device="cpu")
    with pytest.warns(AdapterBankWarning, match="router index was not saved .*No space left on device"):
        bank.add_task("gamma", synthetic_rows("gamma", 6, 0), progress=False)  # one label: router only
    assert [t.name for t in bank.tasks()] == ["alpha", "beta", "gamma"]

    def never(self, path):
        raise AssertionError("a read wrote the index")

    monkeypatch.setattr(RouterIndex, "save", never)
    before = tree_hashes(cbank)
    fresh = AdapterBank.open(cbank, device="cpu")
    assert fresh.predict(["mmmmmm no pq"], ood_quantile=0)[0].task == "gamma"
    assert tree_hashes(cbank) == before


# 5 ------------------------------------------------------------------------------------------------
def test_d05_verify_reports_strays_leftovers_and_unlisted_versions_without_crashing(cbank, lm):
    (cbank / "tasks" / "notes.txt").write_text("x")
    (cbank / "stray.bin").write_bytes(b"x")
    (cbank / "tasks" / ".tmp-alpha-999999999-abcdef12").mkdir()
    report = verify_bank(cbank)
    assert any("notes.txt: not a task directory" in p for p in report.problems)
    assert any("stray.bin: not part of the bank" in p for p in report.problems)
    assert any(".tmp-alpha-999999999-abcdef12: left by a writer" in n for n in report.notes)
    shutil.copytree(lm / "bases" / "v0", lm / "bases" / "v1")
    assert any("v1: base version directory not listed" in n for n in verify_bank(lm).notes)


# 6 ------------------------------------------------------------------------------------------------
def test_d06_uncreatable_paths_are_one_line_errors(tmp_path, tiny_base, cbank):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _ = invoke("init", blocker / "bank", "--base", tiny_base)
    one_line_error(code, str(blocker))
    before = tree_hashes(cbank)
    code, _ = invoke("export", cbank, "--out", blocker / "out", "--task", "alpha")
    one_line_error(code, str(blocker))
    assert tree_hashes(cbank) == before


# 7 ------------------------------------------------------------------------------------------------
def test_d07_a_task_without_task_json_is_named_removable_and_blocks_its_name_clearly(cbank, tmp_path):
    (cbank / "tasks" / "beta" / "task.json").unlink()
    code, out = invoke("list", cbank)
    assert code == 0 and "alpha" in out
    assert "warning: task 'beta' is damaged" in invoke.stderr and f"adapterbank remove {cbank} beta" in invoke.stderr
    train_file = write_jsonl(tmp_path / "b.jsonl", synthetic_rows("beta", 4, 0))
    before = tree_hashes(cbank)
    code, _ = invoke("add-task", cbank, "beta", "--train", train_file, "-q")
    one_line_error(code, "task 'beta' is damaged")
    assert tree_hashes(cbank) == before
    assert invoke("remove", cbank, "beta")[0] == 0 and not (cbank / "tasks" / "beta").exists()
    assert invoke("add-task", cbank, "beta", "--train", train_file, "--epochs", "1", "-q")[0] == 0


# 8 ------------------------------------------------------------------------------------------------
def test_d08_a_bank_moved_while_open_says_so_and_is_not_recreated(cbank, tmp_path):
    bank = AdapterBank.open(cbank, device="cpu")
    bank.predict(["aaaaaa bc"])
    cbank.rename(tmp_path / "moved")
    for call in (bank.tasks, lambda: bank.predict(["aaaaaa bc"]),
                 lambda: bank.add_task("gamma", synthetic_rows("gamma", 4, 0), progress=False),
                 lambda: bank.remove_task("alpha")):
        with pytest.raises(BankError, match="the bank is gone .moved or deleted while open"):
            call()
    assert not cbank.exists()


# 9 ------------------------------------------------------------------------------------------------
def test_d09_one_damaged_task_json_is_skipped_with_a_warning_naming_it(cbank):
    path = cbank / "tasks" / "beta" / "task.json"
    path.write_text(path.read_text().replace('"b_one"', '"b_1"'))
    code, out = invoke("predict", cbank, "--text", "aaaaaa bc de", "--json")
    assert code == 0 and json.loads(out)["task"] == "alpha"
    assert "warning: task 'beta' is damaged" in invoke.stderr and "checksum mismatch" in invoke.stderr
    assert f"adapterbank remove {cbank} beta" in invoke.stderr
    assert not verify_bank(cbank).ok


# 10 -----------------------------------------------------------------------------------------------
def test_d10_a_module_already_in_the_base_is_not_merged_twice(lm):
    assert invoke("merge", lm, "--tasks", "alpha")[0] == 0
    code, out = invoke("list", lm)
    assert "alpha" in out and "merged into v1" in out and "merge needs --retarget" not in out.split("alpha")[1].split("\n")[0]
    before = tree_hashes(lm)
    code, _ = invoke("merge", lm, "--tasks", "alpha", "--retarget")
    one_line_error(code, "already in the current base v1 (merged into v1)")
    assert invoke("merge", lm, "--tasks", "beta", "--retarget")[0] == 0
    code, _ = invoke("merge", lm, "--tasks", "alpha,beta", "--retarget")
    one_line_error(code, "task 'alpha' is already in the current base v2 (merged into v1)")
    assert tree_hashes(lm).keys() >= before.keys()


# 12 -----------------------------------------------------------------------------------------------
line_breaks = st.sampled_from(["\u2028", "\u2029", "\u0085", "\x0c", "\x0b", "\x1c", "\x1d", "\x1e", "\r"])
texts = st.lists(st.text(min_size=0, max_size=6) | line_breaks, min_size=1, max_size=6).map("".join) \
    .filter(lambda t: t.strip() and "\r" not in t[-1:])
labels = st.text(min_size=1, max_size=8).map(str.strip).filter(bool)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(texts, labels), min_size=1, max_size=5))
def test_d12_any_unicode_json_lines_round_trip(tmp_path, rows):
    path = tmp_path / "rows.jsonl"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        for text, label in rows:
            handle.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n")
    data = load_dataset(path)
    assert list(zip(data.texts, data.targets)) == rows


def test_d12_text_files_split_at_newlines_only(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("one\u2028still one\x0cand one\r\ntwo\u0085two\n", encoding="utf-8", newline="")
    assert load_texts(path)[0] == ["one\u2028still one\x0cand one", "two\u0085two"]


# 13 -----------------------------------------------------------------------------------------------
def test_d13_csv_errors_point_at_the_line_where_the_record_starts(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"unclosed,a\n' + "".join(f"t{i},a\n" for i in range(9)), encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.csv:2: malformed CSV \(a quoted field is never closed\)"):
        load_dataset(path)
    path.write_text('text,label\n"two\nlines",a\nok,b\nbad\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.csv:5: expected 2 fields, found 1"):
        load_dataset(path)


def test_d13_a_null_label_is_called_null(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": None}])
    with pytest.raises(DataError, match=r"d\.jsonl:2: field 'label' must be a string, got null"):
        load_dataset(path)


def test_d13_a_bad_device_is_refused_before_any_model_loads(cbank, monkeypatch):
    import adapterbank.core.models as models

    monkeypatch.setattr(models, "load_base", lambda *a, **k: pytest.fail("model loaded"))
    for device in ("gpu", "cuda:x", ""):
        code, _ = invoke("predict", cbank, "--text", "abc", "--device", device)
        one_line_error(code, "unknown device")
    if not torch.cuda.is_available():
        code, _ = invoke("predict", cbank, "--text", "abc", "--device", "cuda")
        one_line_error(code, "CUDA is not available")


# usability ------------------------------------------------------------------------------------------
def test_predict_gives_label_distributions_closest_task_out_of_scope_and_accuracy(cbank, tmp_path):
    bank = AdapterBank.open(cbank, device="cpu")
    [pred] = bank.predict(["aaaaaa bc de"], top_labels=5)
    assert [label for label, _, _ in pred.labels][0] == pred.label and len(pred.labels) >= 2
    assert abs(sum(p for *_, p in pred.labels) - pred.candidates[0][1]) < 1e-3  # top1: the router's share
    [out] = bank.predict(["zzzz yyyy"], ood_quantile=0.99)
    assert out.label is None and out.closest is not None and out.closest[0] in ("alpha", "beta")
    test = write_jsonl(tmp_path / "t.jsonl", synthetic_rows("alpha", 3, 5))
    code, out = invoke("predict", cbank, "--input", test, "--json", "-q", "--batch-size", "2")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(rows) == 7 and set(rows[-1]) == {"accuracy", "texts"} and rows[-1]["texts"] == 6


def test_tab_separated_output_has_a_header_escapes_fields_and_refuses_blank_lines(cbank, tmp_path):
    code, out = invoke("predict", cbank, "--text", "aaaaaa\tbc\nde", "--ood-quantile", "0")
    header, row = out.splitlines()
    assert code == 0 and header == "label\ttask\tscore\ttext" and row.split("\t")[3] == "aaaaaa\\tbc\\nde"
    path = tmp_path / "in.txt"
    path.write_text("aaaaaa\n\nbbbbbb\n")
    code, _ = invoke("predict", cbank, "--input", path)
    one_line_error(code, f"{path}:2: blank line")


def test_in_memory_data_shapes_reprs_labels_and_file_modes(cbank):
    bank = AdapterBank.open(cbank, device="cpu")
    rows = synthetic_rows("delta", 5, 0)
    pairs = [(r["text"], r["label"]) for r in rows]
    for name, data in (("d1", rows), ("d2", pairs), ("d3", ([t for t, _ in pairs], [y for _, y in pairs]))):
        info = bank.add_task(name, data, epochs=1, progress=False)
        assert info.labels == ["d_one", "d_two"] or set(info.labels) == {"d_one", "d_two"}
    with pytest.raises(DataError, match=r"<memory>:2: expected a \{'text', 'label'\} dict or a \(text, label\) pair"):
        bank.add_task("d4", [pairs[0], "oops"], progress=False)
    assert repr(bank) == f"ClassifierBank({str(cbank)!r}, base={bank.base_id!r}, tasks=5)"
    assert repr(bank.task("alpha")) == "TaskInfo('alpha', objective='classification', kind='lora', labels=2)"
    assert bank.labels()[:2] == ["a_one", "a_two"] and "d_two" in bank.labels()
    modes = {p.name: p.stat().st_mode & 0o777 for p in (cbank / "tasks" / "d1").iterdir()}
    assert len(set(modes.values())) == 1, modes  # safetensors as readable as the JSON beside them
    code, out = invoke("list", cbank, "--json")
    assert all(isinstance(t["size_bytes"], int) for t in json.loads(out)["tasks"])


def test_flags_show_no_bool_metavar():
    for command in ("predict", "add-task", "generate", "list"):
        code, out = invoke(command, "--help")
        assert code == 0 and "<bool>" not in out, command


def test_an_exported_task_answers_like_the_bank_merged_and_as_peft(cbank, tmp_path):
    from adapterbank import load_classifier

    bank = AdapterBank.open(cbank, device="cpu")
    texts = [r["text"] for r in synthetic_rows("alpha", 3, 7) + synthetic_rows("beta", 3, 7)]
    for task, peft in (("alpha", False), ("alpha", True), ("beta", True)):
        out = bank.export(tmp_path / f"{task}-{peft}", task=task, peft=peft)
        assert (out / "head.safetensors").is_file() and json.loads((out / "labels.json").read_text())["labels"]
        expected = [p.label for p in bank.predict(texts, task=task, label_weight=0)]  # an export is the module alone
        assert [label for label, _ in load_classifier(out).predict(texts)] == expected, (task, peft)


def test_add_task_says_when_a_clm_module_learned_nothing_or_its_domain_is_out_of_scope(tmp_path, tiny_llama, tiny_base):
    from adapterbank.causal.training import warn_if_unhelpful

    lm = AdapterBank.create(tmp_path / "lm", base=tiny_llama, router_encoder=tiny_base, device="cpu")
    with pytest.warns(AdapterBankWarning, match=r"1 training step\(s\) did not move held-out perplexity"):
        info = lm.add_task("alpha", domain_texts("alpha", 40, seed=0), block_size=32, max_steps=1, lr=1e-9, progress=False)
    assert 0 <= info.record["metrics"]["held_out_in_scope"] <= 1
    with pytest.warns(AdapterBankWarning, match="none of its own held-out text is in scope"):
        warn_if_unhelpful("tiny", 10.0, 5.0, 3, reach=0.0, quantile=0.01, size="2 training block(s)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_unhelpful("fine", 10.0, 5.0, 3, reach=0.9, quantile=0.01, size="200 training block(s)")


def test_a_base_stored_in_half_precision_trains_and_answers(tmp_path, tiny_base):
    """Found on the GPU run: a checkpoint saved in fp16 loads in fp16, and routed inference met its
    activations with the module's fp32 tensors (a dtype error at the first predict)."""
    from transformers import AutoModel, AutoTokenizer

    half = tmp_path / "half-bert"
    AutoModel.from_pretrained(tiny_base).half().save_pretrained(half)
    AutoTokenizer.from_pretrained(tiny_base).save_pretrained(half)
    bank = AdapterBank.create(tmp_path / "bank", base=str(half), device="cpu")
    assert next(bank.base.model.parameters()).dtype == torch.float16
    bank.add_task("alpha", synthetic_rows("alpha", 8, 0), epochs=2, progress=False)
    bank.add_task("beta", synthetic_rows("beta", 8, 0), kind="prompt", epochs=2, progress=False)
    assert [p.task for p in bank.predict(["aaaaaa bc de", "gggggg hi jk"], ood_quantile=0)] == ["alpha", "beta"]
