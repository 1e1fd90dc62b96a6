import json
import re
import zipfile
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapterbank_cli.main import app, main

from conftest import tree_hashes, write_jsonl

runner = CliRunner()


def invoke(*args):
    """Run the CLI as the console script does (library errors -> one line on stderr, exit 1)."""
    result = runner.invoke(app, [str(a) for a in args], standalone_mode=True, catch_exceptions=True)
    if result.exception and not isinstance(result.exception, SystemExit):
        from adapterbank import AdapterBankError

        assert isinstance(result.exception, AdapterBankError), result.exception
        return 1, str(result.exception)
    invoke.stderr = result.stderr
    return result.exit_code, result.stdout


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
    assert code == 0 and len([line for line in out.splitlines() if "\t" in line]) == 16
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


def test_console_script_runs_and_help_documents_commands():
    result = subprocess.run([sys.executable, "-m", "adapterbank_cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("init", "add-task", "list", "show", "remove", "predict", "demo"):
        assert command in result.stdout
    out = runner.invoke(app, ["add-task", "--help"]).output
    for option in ("--train", "--eval", "--kind", "--rank", "--epochs", "--lr", "--batch-size", "--seed", "--device"):
        assert option in out


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


def test_wheel_installs_cli_under_a_unique_name(tmp_path):
    """No generic top-level `cli` package may land in site-packages."""
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(root)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("adapterbank-*.whl"))
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert "adapterbank_cli" in tops and "adapterbank" in tops
    assert "cli" not in tops and not any(t.startswith(("tests", "benchmarks")) for t in tops)
    assert any(n.startswith("adapterbank/demo_data/banking/") for n in zipfile.ZipFile(wheel).namelist())
