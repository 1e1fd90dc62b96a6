import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapterbank_cli.main import app, main

from adapterbank.classify.bank import DEFAULT_TOP_K

from conftest import domain_texts, invoke, tree_hashes, write_jsonl

runner = CliRunner()


@pytest.fixture()
def cli_bank(tmp_path, tiny_base):
    code, out = invoke("init", tmp_path / "bank", "--base", tiny_base, "--device", "cpu")
    assert code == 0, out
    return tmp_path / "bank"


def test_init_add_list_show_predict_remove(cli_bank, task_files):
    train, test = task_files["alpha"]
    code, out = invoke("add-task", cli_bank, "alpha", "--train", train, "--eval", test, "--epochs", "8", "-q")
    assert code == 0, out
    assert "added task alpha: 2 label(s), lora" in out and "validation accuracy:" in out
    code, out = invoke("add-task", cli_bank, "beta", "--train", task_files["beta"][0], "--kind", "prompt", "--epochs", "4", "-q")
    assert code == 0, out
    code, out = invoke("list", cli_bank, "--json")
    listing = json.loads(out)
    assert [(t["name"], t["kind"]) for t in listing["tasks"]] == [("alpha", "lora"), ("beta", "prompt")]
    code, out = invoke("show", cli_bank, "alpha")
    record = json.loads(out)
    assert record["labels"] == ["a_one", "a_two"] and record["hyperparameters"]["epochs"] == 8
    code, out = invoke("predict", cli_bank, "--text", "aaaaaa bc de", "--text", "hhhhhh gi jk", "--json")
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert code == 0 and len(rows) == 2
    assert rows[0]["text"] == "aaaaaa bc de" and rows[0]["task"] == "alpha"
    assert rows[1]["task"] == "beta" and rows[1]["label"] in {"b_one", "b_two", "b_three"}
    code, out = invoke("predict", cli_bank, "--input", test)
    assert code == 0 and out.splitlines()[0] == "label\ttask\tscore\ttext" and len(out.splitlines()) == 17
    assert re.search(r"^accuracy: \d+\.\d\d% \(16 texts\)$", invoke.stderr.replace("\r", "\n"), re.M)
    code, out = invoke("remove", cli_bank, "beta")
    assert code == 0 and json.loads(invoke("list", cli_bank, "--json")[1])["tasks"][0]["name"] == "alpha"


def test_errors_are_one_line_exit_nonzero_and_leave_bank_unchanged(tmp_path, cli_bank, task_files, capsys, monkeypatch):
    train = task_files["alpha"][0]
    assert invoke("add-task", cli_bank, "alpha", "--train", train, "--epochs", "2", "-q")[0] == 0
    before = tree_hashes(cli_bank)
    malformed = tmp_path / "bad.jsonl"
    malformed.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"\n')
    cases = [
        (["add-task", cli_bank, "new", "--train", malformed], f"{malformed}:2: malformed JSON"),
        (["add-task", cli_bank, "new", "--train", tmp_path / "none.jsonl"], "file not found"),
        (["add-task", cli_bank, "new", "--train", write_jsonl(tmp_path / "e.jsonl", [])], "no examples"),
        (["add-task", cli_bank, "new", "--train", write_jsonl(tmp_path / "n.jsonl", [{"text": "a"}])], "n.jsonl:1: missing field 'label'"),
        (["add-task", cli_bank, "alpha", "--train", train], "already exists"),
        (["add-task", cli_bank, "../x", "--train", train], "invalid task name '../x'"),
        (["add-task", cli_bank, "a/b", "--train", train], "invalid task name 'a/b'"),
        (["add-task", cli_bank, "", "--train", train], "invalid task name ''"),
        (["add-task", tmp_path / "nobank", "x", "--train", train], "no such bank"),
        (["show", cli_bank, "nope"], "no task named 'nope'"),
        (["predict", cli_bank], "give texts with --text or a file with --input"),
        (["init", tmp_path / "b2", "--base", tmp_path / "no-model"], "no such directory"),
    ]
    for args, message in cases:
        monkeypatch.setattr(sys, "argv", ["adapterbank", *map(str, args)])
        with pytest.raises(SystemExit) as exited:
            main()
        err = capsys.readouterr().err
        assert exited.value.code == 1, args
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, (args, err)
    assert tree_hashes(cli_bank) == before
    assert not (tmp_path / "b2").exists()


def test_console_script_runs_and_help_documents_every_command():
    result = subprocess.run([sys.executable, "-m", "adapterbank_cli", "--help"], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0
    commands = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert len(commands) == 17
    section = result.stdout.split("Commands:")[1]
    listed = {line.split()[0] for line in section.splitlines() if line.startswith("  ") and line.strip()}
    assert set(commands) <= listed, set(commands) - listed
    for command in commands:
        assert runner.invoke(app, [command, "--help"]).exit_code == 0, command


def _help(*command: str) -> str:
    return re.sub(r"[│\s]+", " ", runner.invoke(app, [*command, "--help"], env={"COLUMNS": "300"}).output)


def test_choices_and_settings_come_from_the_registries():
    from dataclasses import fields

    from adapterbank import CLMConfig, ClassificationConfig, SFTConfig
    from adapterbank.causal.merging import MERGE_METHODS, MergeParams
    from adapterbank.evaluation.baselines import BASELINES
    from adapterbank.kinds import KINDS
    from adapterbank.routing.methods import METHODS

    add_task = _help("add-task")
    assert f"<{'|'.join(KINDS)}>" in add_task and "<classification|clm|sft>" in add_task
    settings = {f.name for cls in (ClassificationConfig, CLMConfig, SFTConfig, *(k.Params for k in KINDS.values())) for f in fields(cls)}
    for name in settings - {"kind", "params"}:
        assert "--" + name.replace("_", "-") in add_task, name
    assert "[default: (8)]" in add_task.split("--rank")[1][:200]  # the default shown is the kind's own
    merge = _help("merge")
    assert f"<{'|'.join(MERGE_METHODS)}>" in merge and all(m.summary in merge for m in MERGE_METHODS.values())
    assert all("--" + f.name.replace("_", "-") in merge for f in fields(MergeParams))
    assert f"<{'|'.join(METHODS)}>" in _help("predict")
    assert all(f"{name}: {b.summary}" in _help("eval") for name, b in BASELINES.items())


def test_predict_defaults_are_the_librarys(cli_bank, task_files):
    import inspect

    from adapterbank import ClassifierBank

    assert inspect.signature(ClassifierBank.predict).parameters["top_k"].default == DEFAULT_TOP_K == 3
    for task in ("alpha", "beta"):
        assert invoke("add-task", cli_bank, task, "--train", task_files[task][0], "--epochs", "2", "-q")[0] == 0
    texts = ["aaaaaa bc de", "hhhhhh gi jk", "abab ghgh"]
    code, out = invoke("predict", cli_bank, *[a for t in texts for a in ("--text", t)], "--composition", "output", "--json")
    from_cli = [json.loads(line) for line in out.strip().splitlines()]
    from_python = ClassifierBank.open(cli_bank, device="cpu").predict(texts, composition="output")
    assert [(r["label"], r["score"]) for r in from_cli] == [(p.label, p.score) for p in from_python]
    code, out = invoke("predict", cli_bank, *[a for t in texts for a in ("--text", t)], "--label-weight", "0", "--json")
    alone = ClassifierBank.open(cli_bank, device="cpu").predict(texts, label_weight=0)
    assert code == 0 and [json.loads(line)["score"] for line in out.strip().splitlines()] == [p.score for p in alone]
    code, _ = invoke("predict", cli_bank, "--text", texts[0], "--label-weight", "-1")
    assert code != 0 and "label_weight" in invoke.stderr


def test_causal_commands_versions_and_rollback(tmp_path, tiny_llama, tiny_base, cli_bank, task_files):
    bank = tmp_path / "lm"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(domain_texts("alpha", 60, seed=0)), encoding="utf-8")
    assert invoke("init", bank, "--base", tiny_llama, "--router-encoder", tiny_base, "--device", "cpu")[0] == 0
    code, out = invoke("add-task", bank, "alpha", "--train", corpus, "--block-size", "32", "--max-steps", "3", "-q")
    assert code == 0 and "added task alpha: clm lora on base v0" in out, out
    code, out = invoke("merge", bank, "--tasks", "alpha", "--method", "ties", "--density", "0.7")
    assert code == 0 and "new base version v1" in out
    code, out = invoke("versions", bank, "--json")
    rows = json.loads(out)
    assert [(r["version"], r["current"]) for r in rows] == [("v0", False), ("v1", True)]
    assert rows[1]["lineage"]["density"] == 0.7 and rows[1]["lineage"]["tasks"][0]["name"] == "alpha"
    code, out = invoke("rollback", bank, "v0")
    assert code == 0 and "current base version is now v0" in out
    code, out = invoke("versions", bank)
    assert out.splitlines()[0].startswith("* v0") and out.splitlines()[1].startswith("  v1")
    assert "(trained on v0" not in invoke("list", bank)[1]
    code, out = invoke("generate", bank, "--prompt", "abc fed", "--max-new-tokens", "3", "--json", "--ood-quantile", "0")
    assert code == 0 and json.loads(out)["task"] == "alpha"
    for args, message in ((["predict", bank, "--text", "x"], "predict needs a classification bank"),
                          (["generate", cli_bank, "--prompt", "x"], "generate needs a causal-LM bank"),
                          (["rollback", cli_bank, "v0"], "rollback needs a causal-LM bank"),
                          (["rollback", bank, "v9"], "no base version 'v9'")):
        code, _ = invoke(*args)
        assert code == 1 and message in invoke.stderr and invoke.stderr.count("\n") <= 1, (args, invoke.stderr)


def test_list_and_bad_input_do_not_load_torch(cli_bank, tmp_path):
    """Commands that need no model must not pay for importing torch/PEFT (seconds on a laptop)."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n')
    script = (
        "import sys; from adapterbank_cli.main import main\n"
        f"for argv in (['list', {str(cli_bank)!r}], ['add-task', {str(cli_bank)!r}, 'x', '--train', {str(bad)!r}]):\n"
        "    sys.argv = ['adapterbank', *argv]\n"
        "    try: main()\n"
        "    except SystemExit: pass\n"
        "print('torch' in sys.modules, 'peft' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert "missing field 'label'" in result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False False"


def test_wheel_holds_every_module_and_the_cli_under_a_unique_name(tmp_path):
    """Every module of the package tree lands in the wheel (packages are discovered, not listed), and no
    generic top-level `cli` package does."""
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(root)],
                   check=True, capture_output=True)
    names = set(zipfile.ZipFile(next(tmp_path.glob("adapterbank-*.whl"))).namelist())
    tops = {name.split("/")[0] for name in names}
    assert "adapterbank_cli" in tops and "adapterbank" in tops
    assert "cli" not in tops and not any(t.startswith(("tests", "benchmarks")) for t in tops)
    modules = {str(p.relative_to(root)) for p in (root / "adapterbank").rglob("*.py")}
    assert len(modules) > 40 and modules <= names, sorted(modules - names)
    assert {f"adapterbank_cli/{p.name}" for p in (root / "cli").glob("*.py")} <= names
    assert any(n.startswith("adapterbank/demo_data/banking/") for n in names)
