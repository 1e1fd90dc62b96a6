"""`adapterbank` CLI: each command is a thin call into adapterbank.AdapterBank."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from adapterbank import AdapterBank, AdapterBankError, TaskInfo, __version__
from adapterbank.data import load_texts
from adapterbank.models import DEFAULT_BASE

app = typer.Typer(
    help="Parameter-efficient continual learning: one frozen base model, one small module per task, "
    "and task-agnostic predictions over every label learned so far.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Kind(str, Enum):
    lora = "lora"
    prompt = "prompt"


BankArg = typer.Argument(..., help="Bank directory.", show_default=False)
DeviceOpt = typer.Option("auto", "--device", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:N.")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


def _open(bank: Path, device: str = "auto") -> AdapterBank:
    """Open without loading the model: commands that need it load and verify it on first use,
    after their inputs have been validated (so bad input fails in well under a second)."""
    return AdapterBank.open(bank, device=device, lazy=True)


@app.command()
def init(
    bank: Path = BankArg,
    base: str = typer.Option("minilm", "--base", help=f"Base model: hub id, local directory, or 'minilm' (the packaged {DEFAULT_BASE}, works offline)."),
    device: str = DeviceOpt,
) -> None:
    """Create an empty bank over a frozen base model."""
    created = AdapterBank.create(bank, base=base, device=device)
    typer.echo(f"created bank {created.path} (base {created.base_id})")


@app.command("add-task")
def add_task(
    bank: Path = BankArg,
    name: str = typer.Argument(..., help="Task name: letters, digits, '_', '-', '.' (max 64)."),
    train: Path = typer.Option(..., "--train", help="Training data: .jsonl ({\"text\", \"label\"} per line) or .csv (text,label columns)."),
    eval_path: Optional[Path] = typer.Option(None, "--eval", help="Validation data (same format); its accuracy is printed and stored."),
    kind: Kind = typer.Option(Kind.lora, "--kind", help="Module kind: LoRA or prompt tuning."),
    rank: int = typer.Option(8, "--rank", help="LoRA rank."),
    virtual_tokens: int = typer.Option(16, "--virtual-tokens", help="Prompt tuning: number of virtual tokens."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs.", show_default="enough for ~120 steps, 3-20"),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (one-cycle schedule).", show_default="3e-3 LoRA, 3e-2 prompt"),
    batch_size: int = typer.Option(32, "--batch-size", help="Training batch size."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same module)."),
    device: str = DeviceOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a module for one classification task and add it; earlier tasks are left untouched."""
    opened = _open(bank, device)
    info = opened.add_task(name, train, eval=eval_path, kind=kind.value, rank=rank, virtual_tokens=virtual_tokens,
                           epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, progress=not quiet)
    metrics = info.record["metrics"]
    typer.echo(f"added task {name}: {len(info.labels)} label(s), {info.kind or 'router only'}, "
               f"{metrics['add_task_seconds']:.1f} s, {info.size_bytes / 1024:.0f} KiB")
    if "eval_accuracy" in metrics:
        typer.echo(f"validation accuracy: {metrics['eval_accuracy']:.2%} ({info.record['data']['eval_examples']} texts)")


@app.command("list")
def list_tasks(bank: Path = BankArg, as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List the bank's tasks in the order they were added."""
    opened = _open(bank)
    tasks = opened.tasks()
    if as_json:
        typer.echo(json.dumps({"bank": str(opened.path), "base": opened.base_id, "tasks": [_summary(t) for t in tasks]}, indent=2))
        return
    typer.echo(f"bank {opened.path}  base {opened.base_id}  {len(tasks)} task(s)")
    for task in tasks:
        row = _summary(task)
        accuracy = f"{row['eval_accuracy']:.1%}" if row["eval_accuracy"] is not None else "-"
        typer.echo(f"  {task.name:<20} {row['kind'] or 'router':<7} {len(task.labels):>4} labels  "
                   f"eval {accuracy:>6}  {row['size_kib']:>6.0f} KiB")


@app.command()
def show(bank: Path = BankArg, name: str = typer.Argument(..., help="Task name.")) -> None:
    """Print one task's record (labels, kind, hyper-parameters, metrics, file checksums) as JSON."""
    info = _open(bank).task(name)
    typer.echo(json.dumps({**info.record, "path": str(info.path), "size_bytes": info.size_bytes}, indent=2, ensure_ascii=False))


@app.command()
def remove(bank: Path = BankArg, name: str = typer.Argument(..., help="Task name.")) -> None:
    """Remove a task and its files from the bank."""
    _open(bank).remove_task(name)
    typer.echo(f"removed task {name}")


@app.command()
def verify(bank: Path = BankArg) -> None:
    """Check a whole bank: manifests against their checksums, every task file against the sha256 in its
    task.json, no stray files. Prints each problem and exits 1 if there is any."""
    from adapterbank.registry import Registry

    registry = Registry.open(bank, check_manifest=False)  # a failing bank.json is reported, not fatal
    checked, problems = registry.verify()
    for problem in problems:
        typer.echo(f"FAIL {problem}", err=True)
    if problems:
        _fail(f"{len(problems)} problem(s) in bank {registry.root}")
    typer.echo(f"ok: bank {registry.root}, {checked} tasks, every file matches its checksum")


@app.command()
def predict(
    bank: Path = BankArg,
    text: Optional[List[str]] = typer.Option(None, "--text", "-t", help="A text to label (repeatable)."),
    input_path: Optional[Path] = typer.Option(None, "--input", "-i", help=".jsonl/.csv with a 'text' field (a 'label' field enables accuracy) or .txt, one text per line."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per text (JSON Lines)."),
    composition: str = typer.Option("top1", "--composition", help="top1: the best task's module answers; output: the --top-k best modules' label probabilities mixed by the router's; weights: their LoRA updates mixed in one pass."),
    top_k: int = typer.Option(3, "--top-k", help="Modules mixed by --composition output/weights."),
    method: Optional[str] = typer.Option(None, "--method", help="Router: mahalanobis or prototype.", show_default="bank.json's (mahalanobis)"),
    ood_quantile: Optional[float] = typer.Option(None, "--ood-quantile", help="Out-of-scope threshold: a text less similar to its task than this fraction of the task's own training texts gets no label; 0 turns it off.", show_default="bank.json's (0.01)"),
    task: Optional[str] = typer.Option(None, "--task", help="Skip routing: use this task's module."),
    device: str = DeviceOpt,
) -> None:
    """Label texts over every label of every task, without being told the task (out-of-scope texts print label None)."""
    if bool(text) == (input_path is not None):
        _fail("give texts with --text or a file with --input (one of the two)")
    texts, gold = (list(text), None) if text else load_texts(input_path)
    predictions = _open(bank, device).predict(texts, top_k=top_k, composition=composition, method=method,
                                               ood_quantile=ood_quantile, task=task, progress=input_path is not None)
    for item, prediction in zip(texts, predictions):
        if as_json:
            typer.echo(json.dumps({"text": item, **prediction.to_dict()}, ensure_ascii=False))
        else:
            typer.echo(f"{prediction.label}\t{prediction.task}\t{prediction.score:.3f}\t{item}")
    if gold is not None:
        accuracy = sum(p.label == g for p, g in zip(predictions, gold)) / len(gold)
        typer.echo(f"accuracy: {accuracy:.2%} ({len(gold)} texts)", err=True)


class Scenario(str, Enum):
    class_ = "class"
    task = "task"
    domain = "domain"


@app.command("eval")
def evaluate(
    data_dir: Path = typer.Argument(..., help="train.jsonl + test.jsonl (labels dealt into tasks), or one sub-folder per task/domain with its own files.", show_default=False),
    out: Path = typer.Option(..., "--out", help="Output directory: results.json, report.md, accuracy_matrix.png and the bank (must not hold a bank yet)."),
    scenario: Scenario = typer.Option(Scenario.class_, "--scenario", help="class: new labels, no task id at test time; task: the task id is given; domain: same labels, new domains (sub-folders)."),
    n_tasks: Optional[int] = typer.Option(None, "--tasks", help="Flat data: deal the labels into this many tasks (seeded shuffle).", show_default="5"),
    task_map: Optional[Path] = typer.Option(None, "--task-map", help='Flat data: JSON {"task": ["label", ...]} fixing tasks and their order (e.g. CLINC150 domains.json).'),
    order: Optional[str] = typer.Option(None, "--order", help="Sub-folders: comma-separated task order.", show_default="alphabetical"),
    kind: Kind = typer.Option(Kind.lora, "--kind", help="Module kind for every task."),
    seed: int = typer.Option(0, "--seed", help="Seed for the task split and training (same seed, same numbers)."),
    baselines: str = typer.Option("joint,seqlora,ncm", "--baselines", help="Comma-separated baselines to run beside the bank ('' for none)."),
    max_train_per_class: Optional[int] = typer.Option(None, "--max-train-per-class", help="Cap training texts per label (seeded draw)."),
    base: str = typer.Option("minilm", "--base", help="Base model for the fresh bank."),
    device: str = DeviceOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Continual-learning evaluation: add the tasks one by one to a fresh bank, measure after each
    (accuracy matrix, AA, BWT, FWT, forgetting, routing, oracle) and compare with baselines."""
    from adapterbank import evaluation, report
    from adapterbank.baselines import BASELINES
    from adapterbank.scenarios import load_scenario

    chosen = [b.strip() for b in baselines.split(",") if b.strip()]
    for name in chosen:
        if name not in BASELINES:
            _fail(f"--baselines: unknown baseline {name!r}; choose from: {', '.join(BASELINES)}")
    tasks = load_scenario(data_dir, scenario.value, n_tasks=n_tasks, task_map=task_map,
                          order=[o.strip() for o in order.split(",") if o.strip()] if order else None, seed=seed,
                          max_train_per_class=max_train_per_class)
    results = evaluation.run(tasks, out, scenario=scenario.value, base=base, kind=kind.value, seed=seed,
                             baselines=chosen, device=device, progress=not quiet)
    paths = report.write(results, out)
    typer.echo(report.markdown(results))
    typer.echo(f"wrote {paths['results']}, {paths['report']}, {paths['heatmap']}")


@app.command()
def demo(
    bank: Optional[Path] = typer.Option(None, "--bank", help="Where to build the demo bank (must not exist).", show_default="a new temp dir, kept"),
    kind: Kind = typer.Option(Kind.lora, "--kind", help="Module kind for every task."),
    device: str = DeviceOpt,
) -> None:
    """Build a bank from the packaged demo data (4 tasks) and predict without task ids. ~1 minute on 2 CPU cores."""
    from adapterbank.demo import run_demo

    path = bank if bank is not None else Path(tempfile.mkdtemp(prefix="adapterbank-demo-"))
    result = run_demo(path, kind=kind.value, device=device, echo=typer.echo)
    typer.echo("\nRouted predictions (no task id given):")
    typer.echo(f"  {'text':<52} {'predicted':<16} {'task':<9} {'score':>5}  gold")
    for item, gold, prediction in zip(result.texts, result.gold, result.predictions):
        mark = "" if prediction.label == gold else "  <-- wrong"
        typer.echo(f"  {item[:52]:<52} {str(prediction.label):<16} {str(prediction.task):<9} {prediction.score:>5.2f}  {gold}{mark}")
    typer.echo(f"\ntask-agnostic accuracy: {result.accuracy:.1%} on {len(result.texts)} texts; total {result.seconds:.0f} s\n")
    list_tasks(path, as_json=False)
    typer.echo(f"\nThe bank is kept at {path}; try: adapterbank predict {path} --text 'what is my balance'")


@app.callback(invoke_without_command=True)
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        typer.echo(f"adapterbank {__version__}")
        raise typer.Exit()


def _summary(task: TaskInfo) -> dict:
    return {"name": task.name, "kind": task.kind, "labels": task.labels,
            "eval_accuracy": task.record.get("metrics", {}).get("eval_accuracy"),
            "size_kib": task.size_bytes / 1024}


def main() -> None:
    """Console entry point: library errors become one line on stderr and exit code 1."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app()
    except AdapterBankError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted; the bank is unchanged unless a task was reported added", err=True)
        sys.exit(130)
