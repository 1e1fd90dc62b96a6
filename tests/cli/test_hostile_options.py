"""Every CLI command, every option and argument, hostile values: nan, inf, 0, negative, huge, empty, the
wrong type, and hostile paths (missing, a file, a directory, uncreatable, read-only).

Each run starts from a valid command line with one value replaced, and must end in exit 0 (the value
was acceptable), or exit 1 or 2 with exactly one `error:` line on stderr, no traceback, and every bank
byte unchanged. A non-finite number is never accepted. Commands and options are read from the CLI itself,
so a new option is covered the day it is added."""

import inspect
import os
import shutil
import subprocess
import typing
import uuid
from enum import Enum
from pathlib import Path

import pytest
import typer.main

from adapterbank_cli.main import app

from conftest import copy_bank, invoke, synthetic_rows, tree_hashes, write_jsonl

NUMBERS = ["nan", "inf", "-inf", "0", "-1", "1e300", "99999999999999999999", "", "abc"]
STRINGS = ["", "nan", "-1", "../../x", "x" * 300]
CHOICES = ["", "nan", "bogus"]
NON_FINITE = {"nan", "inf", "-inf"}
PATHS = ["missing", "a-file", "a-dir", "uncreatable", "read-only"]
# Valid command lines ({cbank}, {lm}: copies of the small banks; {new}: a fresh path; {data}, {evaldata}: inputs).
VALID = {
    "init": ["{new}", "--base", "{tiny_base}", "--device", "cpu"],
    "add-task": ["{cbank}", "new", "--train", "{data}", "--epochs", "1", "-q", "--device", "cpu"],
    "list": ["{cbank}"],
    "show": ["{cbank}", "alpha"],
    "remove": ["{cbank}", "beta"],
    "verify": ["{cbank}"],
    "predict": ["{cbank}", "--text", "aaaaaa bc", "--device", "cpu"],
    "eval": ["{evaldata}", "--out", "{new}", "--tasks", "2", "--baselines", "", "--base", "{tiny_base}", "--device", "cpu",
             "-q", "--max-train-per-class", "4"],
    "generate": ["{lm}", "--prompt", "abc", "--max-new-tokens", "2", "--device", "cpu"],
    "merge": ["{lm}", "--tasks", "alpha", "--device", "cpu"],
    "versions": ["{lm}"],
    "rollback": ["{lm}", "v0"],
    "export": ["{cbank}", "--out", "{new}", "--task", "alpha", "--device", "cpu"],
    "demo": ["--bank", "{a-file}"],  # a valid --bank would build the MiniLM demo: every run here must fail
    "import": ["{lm}", "imported", "--adapter", "{a-dir}", "--examples", "{data}", "--device", "cpu"],
    "learn": ["{cbank}", "--stream", "{data}", "--device", "cpu", "-q"],
    "serve": ["{cbank}", "--api-key-file", "{a-file}"],  # a valid line would serve forever: every run here must fail
}
SKIP = {("demo", "bank"): {"missing", "a-dir"}}  # values that would run the one-minute demo


def _value_type(command, name: str):
    hints = typing.get_type_hints(inspect.unwrap(command.callback)) if not hasattr(command.callback, "__signature__") else \
        {p.name: p.annotation for p in inspect.signature(command.callback).parameters.values()}
    hint = hints.get(name, str)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    hint = args[0] if args and typing.get_origin(hint) is typing.Union else hint
    if typing.get_origin(hint) in (list, typing.List):
        hint = typing.get_args(hint)[0]
    return hint


def _cases():
    group = typer.main.get_command(app)
    for command_name, command in group.commands.items():
        for param in command.params:
            if getattr(param, "is_flag", False) or param.name == "help":
                continue
            kind = _value_type(command, param.name)
            if isinstance(kind, type) and issubclass(kind, Enum):
                values = CHOICES
            elif kind in (int, float):
                values = NUMBERS
            elif kind is Path or (isinstance(kind, type) and issubclass(kind, os.PathLike)):
                values = PATHS
            else:
                values = STRINGS
            values = [v for v in values if v not in SKIP.get((command_name, param.name), set())]
            yield command_name, param, kind, values


CASES = list(_cases())


@pytest.fixture(scope="module")
def world(tmp_path_factory, classifier_template, causal_template, tiny_base):
    root = tmp_path_factory.mktemp("hostile")
    data = write_jsonl(root / "data.jsonl", synthetic_rows("delta", 4, 0))
    evaldata = root / "eval"
    evaldata.mkdir()
    rows = synthetic_rows("alpha", 6, 0) + synthetic_rows("beta", 6, 0)
    write_jsonl(evaldata / "train.jsonl", rows)
    write_jsonl(evaldata / "test.jsonl", rows[::3])
    (root / "a-file").write_text("not what you expected\n")
    (root / "a-dir").mkdir()
    read_only = root / "ro"
    read_only.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(read_only)],
                                                   capture_output=True).returncode == 0
    paths = {"missing": root / "missing" / "deeper", "a-file": root / "a-file", "a-dir": root / "a-dir",
             "uncreatable": root / "a-file" / "sub", "read-only": read_only / "x" if mounted else None}
    yield {"root": root, "data": data, "evaldata": evaldata, "tiny_base": tiny_base, "paths": paths,
           "templates": {"cbank": classifier_template, "lm": causal_template}}
    if mounted:
        subprocess.run(["umount", "-l", str(read_only)], capture_output=True)


def _argv(world, command: str, param, value: str) -> list[str]:
    slots = {"tiny_base": world["tiny_base"], "data": world["data"], "evaldata": world["evaldata"],
             "new": world["root"] / f"new-{uuid.uuid4().hex[:8]}", "a-file": world["paths"]["a-file"],
             "a-dir": world["paths"]["a-dir"],
             "cbank": world["cbank"], "lm": world["lm"]}
    argv = [str(slots[a[1:-1]]) if a.startswith("{") and a.endswith("}") else a for a in VALID[command]]
    if value in world["paths"]:
        value = str(world["paths"][value])
    if param.param_type_name == "argument":
        position = [p.name for p in typer.main.get_command(app).commands[command].params
                    if p.param_type_name == "argument"].index(param.name)
        argv[position] = value
        return [command, *argv]
    flag = param.opts[0]
    if flag in argv:
        at = argv.index(flag)
        del argv[at:at + 2]
    return [command, *argv, flag, value]


@pytest.mark.parametrize("command", list(VALID))
def test_every_option_refuses_hostile_values_in_one_line_and_leaves_banks_unchanged(world, tmp_path, command):
    def fresh_banks():
        for name, template in world["templates"].items():
            if world.get(name) is not None and world[name].exists():
                shutil.rmtree(world[name])
            world[name] = copy_bank(template, tmp_path / f"{name}-{uuid.uuid4().hex[:6]}")

    fresh_banks()
    tried, failures = 0, []
    for name, param, kind, values in [c for c in CASES if c[0] == command]:
        for value in values:
            if value in world["paths"] and world["paths"][value] is None:
                continue  # no read-only mount on this machine
            argv = _argv(world, command, param, value)
            before = {n: tree_hashes(world[n]) for n in ("cbank", "lm")}
            code, _ = invoke(*argv)
            tried += 1
            lines = invoke.stderr.strip().splitlines()
            errors = [line for line in lines if not line.startswith("warning: ")]
            label = f"{' '.join(argv[:1])} {param.name}={value!r}"
            if code == 0:
                if value in NON_FINITE and kind in (int, float):
                    failures.append(f"{label}: a non-finite number was accepted")
                fresh_banks()
                continue
            if code not in (1, 2) or len(errors) != 1 or not errors[0].startswith("error: ") or "Traceback" in invoke.stderr:
                failures.append(f"{label}: exit {code}, stderr {invoke.stderr!r}")
            if {n: tree_hashes(world[n]) for n in ("cbank", "lm")} != before:
                failures.append(f"{label}: a bank changed")
                fresh_banks()
    assert tried > 0 and not failures, "\n".join(failures)
    print(f"{command}: {tried} hostile runs")
