"""`adapterbank` CLI: each command parses its arguments and calls the library (AdapterBank and its two
families, verify_bank, the evaluation protocol); choices and settings come from the library's registries."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

import typer

from adapterbank import AdapterBank, AdapterBankError, CLMConfig, ClassificationConfig, TaskInfo, __version__
from adapterbank.causal.merging import MERGE_METHODS, MergeParams
from adapterbank.classify.bank import COMPOSITIONS, DEFAULT_TOP_K
from adapterbank.core.models import DEFAULT_BASE, DEFAULT_CAUSAL_BASE
from adapterbank.data import load_texts
from adapterbank.evaluation.baselines import BASELINES
from adapterbank.evaluation.scenarios import SCENARIOS
from adapterbank.kinds import DEFAULT_KIND, KINDS
from adapterbank.routing.methods import METHODS

from .generated import choices, listing, setting_options

app = typer.Typer(
    help="Parameter-efficient continual learning: one frozen base model, one small module per task, "
    "and task-agnostic predictions over every label learned so far.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Kind = choices("Kind", KINDS)
OBJECTIVES = {name: config for family in AdapterBank.families().values() for name, config in family.objectives.items()}
Objective = choices("Objective", OBJECTIVES)
MergeMethod = choices("MergeMethod", MERGE_METHODS)
RouterMethod = choices("RouterMethod", METHODS)
Composition = choices("Composition", COMPOSITIONS)
Scenario = choices("Scenario", SCENARIOS)

BankArg = typer.Argument(..., help="Bank directory.", show_default=False)
DeviceOpt = typer.Option("auto", "--device", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:N.")
KindOpt = typer.Option(DEFAULT_KIND, "--kind", help=f"Module kind: {listing(KINDS)}.")
TRAINING_SETTINGS = [*OBJECTIVES.items(), *((f"--kind {name}", kind.Params) for name, kind in KINDS.items())]


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
    base: str = typer.Option("minilm", "--base", help=f"Base model: hub id, local directory, or 'minilm' (the packaged {DEFAULT_BASE}, works offline) "
                             f"for classification; 'smollm2-135m' (packaged {DEFAULT_CAUSAL_BASE} GGUF, offline), a .gguf file or any ...ForCausalLM model for continual pre-training."),
    router_encoder: Optional[str] = typer.Option(None, "--router-encoder", help="Causal banks: the encoder whose features route prompts to domain modules.", show_default="minilm"),
    device: str = DeviceOpt,
) -> None:
    """Create an empty bank over a frozen base model. A causal LM's base is stored in the bank as
    safetensors (bases/v0), so later commands start in seconds."""
    created = AdapterBank.create(bank, base=base, device=device, router_encoder=router_encoder)
    extra = f", base version {created.current_base_version} stored in {created.path / 'bases'}" \
        if hasattr(created, "current_base_version") else ""
    typer.echo(f"created bank {created.path} (base {created.base_id}{extra})")


@app.command("add-task")
@setting_options(TRAINING_SETTINGS, skip=("kind", "params"))
def add_task(
    bank: Path = BankArg,
    name: str = typer.Argument(..., help="Task name: letters, digits, '_', '-', '.' (max 64)."),
    train: Path = typer.Option(..., "--train", help="Training data: .jsonl ({\"text\", \"label\"} per line) or .csv (text,label columns); for --objective clm, {\"text\"} per line (or .txt)."),
    eval_path: Optional[Path] = typer.Option(None, "--eval", help="Validation data (same format): accuracy, or for clm the held-out perplexity (default: 5% of the training blocks)."),
    objective: Optional[Objective] = typer.Option(None, "--objective", help="classification (labelled texts, classification banks) or clm (unlabelled domain text, causal-LM banks).", show_default="the bank's own"),
    kind: Kind = KindOpt,
    device: str = DeviceOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    settings: Optional[dict] = None,
) -> None:
    """Train a module for one task and add it; earlier tasks are left untouched. Classification tasks
    learn labels; clm tasks (causal-LM banks) learn a domain's text and report held-out perplexity."""
    opened = _open(bank, device)
    info = opened.add_task(name, train, eval=eval_path, progress=not quiet, kind=kind.value,
                           **({"objective": objective.value} if objective else {}), **(settings or {}))
    typer.echo(_ADDED.get(info.objective, _added_classification)(info))


def _added_classification(info: TaskInfo) -> str:
    metrics = info.record["metrics"]
    lines = [f"added task {info.name}: {len(info.labels)} label(s), {info.kind or 'router only'}, "
             f"{metrics['add_task_seconds']:.1f} s, {info.size_bytes / 1024:.0f} KiB"]
    if "eval_accuracy" in metrics:
        lines.append(f"validation accuracy: {metrics['eval_accuracy']:.2%} ({info.record['data']['eval_examples']} texts)")
    return "\n".join(lines)


def _added_clm(info: TaskInfo) -> str:
    metrics = info.record["metrics"]
    return (f"added task {info.name}: clm {info.kind} on base {info.record['base']['version']}, {metrics['train_tokens']:,} "
            f"tokens at {metrics['train_tokens_per_s']:.0f} tokens/s, {metrics['add_task_seconds']:.1f} s, "
            f"{info.size_bytes / 1024:.0f} KiB\n"
            f"held-out perplexity: {metrics['perplexity_before']:.2f} -> {metrics['perplexity_after']:.2f} "
            f"({metrics['held_out_tokens']:,} tokens, {metrics['held_out_source']})")


_ADDED = {ClassificationConfig.objective: _added_classification, CLMConfig.objective: _added_clm}


@app.command("list")
def list_tasks(bank: Path = BankArg, as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List the bank's tasks in the order they were added."""
    opened = _open(bank)
    tasks = opened.tasks()
    if as_json:
        typer.echo(json.dumps({"bank": str(opened.path), "family": opened.family, "base": opened.base_id,
                               "tasks": [_summary(t) for t in tasks]}, indent=2))
        return
    typer.echo(f"bank {opened.path}  base {opened.base_id}  {len(tasks)} task(s)")
    _LIST[opened.family](opened, tasks)


def _list_classifier(bank: AdapterBank, tasks: list[TaskInfo]) -> None:
    for task in tasks:
        row = _summary(task)
        accuracy = f"{row['eval_accuracy']:.1%}" if row["eval_accuracy"] is not None else "-"
        typer.echo(f"  {task.name:<20} {row['kind'] or 'router':<7} {len(task.labels):>4} labels  "
                   f"eval {accuracy:>6}  {row['size_kib']:>6.0f} KiB")


def _list_causal(bank: AdapterBank, tasks: list[TaskInfo]) -> None:
    current = bank.current_base_version
    typer.echo(f"current base version {current}")
    for task in tasks:
        row, trained_on = _summary(task), task.record["base"]["version"]
        flag = "" if trained_on == current else f"  (trained on {trained_on}: served on {trained_on}, merge needs --retarget)"
        metrics = task.record.get("metrics", {})
        typer.echo(f"  {task.name:<20} {task.objective:<5} base {trained_on:<4} perplexity {metrics.get('perplexity_before', 0):.2f} -> "
                   f"{metrics.get('perplexity_after', 0):.2f}  {row['size_kib']:>6.0f} KiB{flag}")


_LIST = {"classifier": _list_classifier, "causal": _list_causal}


@app.command()
def show(bank: Path = BankArg, name: str = typer.Argument(..., help="Task name.")) -> None:
    """Print one task's record as JSON: labels, kind, its training config and the resolved
    hyper-parameters, metrics, data fingerprints, file checksums."""
    info = _open(bank).task(name)
    typer.echo(json.dumps({**info.record, "path": str(info.path), "size_bytes": info.size_bytes}, indent=2, ensure_ascii=False))


@app.command()
def remove(bank: Path = BankArg, name: str = typer.Argument(..., help="Task name.")) -> None:
    """Remove a task and its files from the bank."""
    _open(bank).remove_task(name)
    typer.echo(f"removed task {name}")


@app.command()
def verify(bank: Path = BankArg) -> None:
    """Check a whole bank: manifests against their checksums, every task and base-version file against
    its recorded sha256, nothing stray. Prints each problem and exits 1 if there is any."""
    from adapterbank import verify_bank

    report = verify_bank(bank)
    for note in report.notes:
        typer.echo(f"note: {note}", err=True)
    for problem in report.problems:
        typer.echo(f"FAIL {problem}", err=True)
    if not report.ok:
        _fail(f"{len(report.problems)} problem(s) in bank {report.path}")
    typer.echo(f"ok: bank {report.path}, {report.tasks} tasks, every file matches its checksum")


@app.command()
def predict(
    bank: Path = BankArg,
    text: Optional[List[str]] = typer.Option(None, "--text", "-t", help="A text to label (repeatable)."),
    input_path: Optional[Path] = typer.Option(None, "--input", "-i", help=".jsonl/.csv with a 'text' field (a 'label' field enables accuracy) or .txt, one text per line."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per text (JSON Lines)."),
    composition: Composition = typer.Option("top1", "--composition", help="top1: the best task's module answers; output: the --top-k best modules' label probabilities mixed by the router's; weights: their updates mixed in one pass."),
    top_k: int = typer.Option(DEFAULT_TOP_K, "--top-k", help="Modules mixed by --composition output/weights."),
    method: Optional[RouterMethod] = typer.Option(None, "--method", help=f"Router method: {listing(METHODS)}.", show_default="bank.json's"),
    ood_quantile: Optional[float] = typer.Option(None, "--ood-quantile", help="Out-of-scope threshold: a text less similar to its task than this fraction of the task's own training texts gets no label; 0 turns it off.", show_default="bank.json's (0.01)"),
    task: Optional[str] = typer.Option(None, "--task", help="Skip routing: use this task's module."),
    device: str = DeviceOpt,
) -> None:
    """Label texts over every label of every task, without being told the task (out-of-scope texts print label None)."""
    if bool(text) == (input_path is not None):
        _fail("give texts with --text or a file with --input (one of the two)")
    texts, gold = (list(text), None) if text else load_texts(input_path)
    predictions = _open(bank, device).predict(texts, top_k=top_k, composition=composition.value,
                                              method=method.value if method else None, ood_quantile=ood_quantile,
                                              task=task, progress=input_path is not None)
    for item, prediction in zip(texts, predictions):
        if as_json:
            typer.echo(json.dumps({"text": item, **prediction.to_dict()}, ensure_ascii=False))
        else:
            typer.echo(f"{prediction.label}\t{prediction.task}\t{prediction.score:.3f}\t{item}")
    if gold is not None:
        accuracy = sum(p.label == g for p, g in zip(predictions, gold)) / len(gold)
        typer.echo(f"accuracy: {accuracy:.2%} ({len(gold)} texts)", err=True)


@app.command("eval")
def evaluate(
    data_dir: Path = typer.Argument(..., help="train.jsonl + test.jsonl (labels dealt into tasks), or one sub-folder per task/domain with its own files.", show_default=False),
    out: Path = typer.Option(..., "--out", help="Output directory: results.json, report.md, accuracy_matrix.png and the bank (must not hold a bank yet)."),
    scenario: Scenario = typer.Option("class", "--scenario", help="class: new labels, no task id at test time; task: the task id is given; domain: same labels, new domains (sub-folders)."),
    n_tasks: Optional[int] = typer.Option(None, "--tasks", help="Flat data: deal the labels into this many tasks (seeded shuffle).", show_default="5"),
    task_map: Optional[Path] = typer.Option(None, "--task-map", help='Flat data: JSON {"task": ["label", ...]} fixing tasks and their order (e.g. CLINC150 domains.json).'),
    order: Optional[str] = typer.Option(None, "--order", help="Sub-folders: comma-separated task order.", show_default="alphabetical"),
    kind: Kind = typer.Option(DEFAULT_KIND, "--kind", help=f"Module kind of every task and of the trained baselines: {listing(KINDS)}."),
    seed: int = typer.Option(0, "--seed", help="Seed for the task split and training (same seed, same numbers)."),
    baselines: str = typer.Option(",".join(BASELINES), "--baselines", help=f"Comma-separated baselines to run beside the bank ('' for none): {listing(BASELINES)}."),
    max_train_per_class: Optional[int] = typer.Option(None, "--max-train-per-class", help="Cap training texts per label (seeded draw)."),
    base: str = typer.Option("minilm", "--base", help="Base model for the fresh bank."),
    device: str = DeviceOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Continual-learning evaluation: add the tasks one by one to a fresh bank, measure after each
    (accuracy matrix, AA, BWT, FWT, forgetting, routing, oracle) and compare with baselines."""
    from adapterbank.evaluation import protocol, report
    from adapterbank.evaluation.scenarios import load_scenario

    chosen = [b.strip() for b in baselines.split(",") if b.strip()]
    for name in chosen:
        if name not in BASELINES:
            _fail(f"--baselines: unknown baseline {name!r}; choose from: {', '.join(BASELINES)}")
    tasks = load_scenario(data_dir, scenario.value, n_tasks=n_tasks, task_map=task_map,
                          order=[o.strip() for o in order.split(",") if o.strip()] if order else None, seed=seed,
                          max_train_per_class=max_train_per_class)
    results = protocol.run(tasks, out, scenario=scenario.value, base=base, kind=kind.value, seed=seed,
                           baselines=chosen, device=device, progress=not quiet)
    paths = report.write(results, out)
    typer.echo(report.markdown(results))
    typer.echo(f"wrote {paths['results']}, {paths['report']}, {paths['heatmap']}")


@app.command()
def generate(
    bank: Path = BankArg,
    prompt: Optional[List[str]] = typer.Option(None, "--prompt", "-p", help="A prompt to continue (repeatable)."),
    input_path: Optional[Path] = typer.Option(None, "--input", "-i", help=".jsonl/.csv with a 'text' field, or .txt with one prompt per line."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="Tokens to generate per prompt."),
    task: Optional[str] = typer.Option(None, "--task", help="Skip routing: every prompt uses this task's module."),
    sample: bool = typer.Option(False, "--sample", help="Sample (with --temperature, --top-p) instead of greedy decoding."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature (with --sample)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass (with --sample)."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    ood_quantile: Optional[float] = typer.Option(None, "--ood-quantile", help="A prompt less similar to its closest domain than this fraction of the domain's own text goes to the base; 0 turns it off.", show_default="bank.json's (0.01)"),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per prompt (JSON Lines)."),
    device: str = DeviceOpt,
) -> None:
    """Continue prompts on a causal-LM bank, each with the module of the domain it is closest to
    (mixed batches); prompts no domain matches are continued by the base alone."""
    if bool(prompt) == (input_path is not None):
        _fail("give prompts with --prompt or a file with --input (one of the two)")
    prompts = list(prompt) if prompt else load_texts(input_path)[0]
    results = _open(bank, device).generate(prompts, max_new_tokens=max_new_tokens, task=task, do_sample=sample,
                                           temperature=temperature, top_p=top_p, seed=seed, ood_quantile=ood_quantile,
                                           progress=input_path is not None)
    for item, result in zip(prompts, results):
        if as_json:
            typer.echo(json.dumps({"prompt": item, **result.to_dict()}, ensure_ascii=False))
        else:
            typer.echo(f"[{result.task or 'base'} @ {result.base_version}] {item}{result.text}")


@app.command()
@setting_options([("", MergeParams)])
def merge(
    bank: Path = BankArg,
    tasks: str = typer.Option(..., "--tasks", help="Comma-separated modules to merge into the current base."),
    method: MergeMethod = typer.Option("linear", "--method", help=f"{listing(MERGE_METHODS)}."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Comma-separated weight per task.", show_default="1 each"),
    seed: int = typer.Option(0, "--seed", help="Seed of the random methods (dare)."),
    retarget: bool = typer.Option(False, "--retarget", help="Also merge modules trained on an older base version."),
    device: str = DeviceOpt,
    settings: Optional[dict] = None,
) -> None:
    """Merge modules into the base: writes the next base version (v0 -> v1 -> ...) with its lineage in
    bank.json and makes it current. Earlier versions stay on disk (see `rollback`)."""
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    try:
        parsed = [float(w) for w in weights.split(",")] if weights else None
    except ValueError:
        _fail(f"--weights: expected comma-separated numbers, got {weights!r}")
    record = _open(bank, device).merge(names, method=method.value, weights=parsed, seed=seed, retarget=retarget,
                                       **(settings or {}))
    lineage = record["lineage"]
    typer.echo(f"merged {', '.join(names)} into base {lineage['parent']} with {lineage['method']}: new base version "
               f"{record['version']} (now current; {lineage['weights_changed']} weight matrices changed)")


@app.command()
def versions(bank: Path = BankArg, as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List a causal-LM bank's base versions with their lineage; * marks the current one."""
    rows = _open(bank).base_versions()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        lineage = row["lineage"]
        what = (f"source {lineage['source']}" if "source" in lineage else
                f"{lineage['method']} of {', '.join(t['name'] for t in lineage['tasks'])} into {lineage['parent']}")
        typer.echo(f"{'*' if row['current'] else ' '} {row['version']:<4} {row['created_at']}  {what}")


@app.command()
def rollback(bank: Path = BankArg, version: str = typer.Argument(..., help="Base version to make current (e.g. v0).")) -> None:
    """Make another base version current (new modules train on it, generation uses it). No files change."""
    opened = _open(bank)
    opened.rollback(version)
    typer.echo(f"current base version is now {opened.current_base_version}")


@app.command()
def export(
    bank: Path = BankArg,
    out: Path = typer.Option(..., "--out", help="Output directory (must not exist, or be empty)."),
    task: Optional[str] = typer.Option(None, "--task", help="Merge this task's module into the exported model."),
    base_version: Optional[str] = typer.Option(None, "--base-version", help="Causal banks: base version to export.", show_default="the task's own, else the current"),
    peft: bool = typer.Option(False, "--peft", help="Write the --task module as a PEFT directory (PEFT, vLLM, LoRAX) instead of a merged model."),
    device: str = DeviceOpt,
) -> None:
    """Write a plain Hugging Face checkpoint (config, tokenizer, safetensors) that transformers loads
    without adapterbank: AutoModelForCausalLM for causal banks, AutoModel (+ head.safetensors,
    labels.json) for classification banks."""
    written = _open(bank, device).export(out, task=task, base_version=base_version, peft=peft)
    typer.echo(f"exported {'PEFT module' if peft else 'checkpoint'} to {written}")


@app.command()
def demo(
    bank: Optional[Path] = typer.Option(None, "--bank", help="Where to build the demo bank (must not exist).", show_default="a new temp dir, kept"),
    kind: Kind = typer.Option(DEFAULT_KIND, "--kind", help=f"Module kind for every task: {listing(KINDS)}."),
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
    return {"name": task.name, "objective": task.objective, "kind": task.kind, "labels": task.labels,
            "eval_accuracy": task.record.get("metrics", {}).get("eval_accuracy"), "size_kib": task.size_bytes / 1024}


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
