"""`adapterbank` CLI: each command parses its arguments and calls the library (AdapterBank and its two
families, verify_bank, the evaluation protocol); choices and settings come from the library's registries."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import List, Optional

import typer

from adapterbank import AdapterBank, AdapterBankError, AdapterBankWarning, __version__
from adapterbank.causal.config import GenerationSettings
from adapterbank.causal.merging import MERGE_METHODS, MergeParams
from adapterbank.classify.bank import DEFAULT_BATCH_SIZE, DEFAULT_TOP_K
from adapterbank.core.models import DEFAULT_BASE, DEFAULT_CAUSAL_BASE
from adapterbank.data import load_texts
from adapterbank.evaluation.online_protocol import DEFAULT_POINTS, ONLINE_BASELINES
from adapterbank.evaluation.protocols import PROTOCOLS
from adapterbank.kinds import DEFAULT_KIND, KINDS
from adapterbank.routing.methods import DEFAULT_LABEL_WEIGHT, DEFAULT_OOD_QUANTILE, DEFAULT_PROMPT_OOD_QUANTILE, METHODS

from . import output
from .common import (TRAINING_SETTINGS, BankArg, Composition, DeviceOpt, Kind, KindOpt, MergeMethod, Objective,
                     RouterMethod, Scenario, app, fail, open_bank)
from .generated import listing, setting_options


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
    train: Path = typer.Option(..., "--train", help="Training data: .jsonl ({\"text\", \"label\"} per line) or .csv (text,label columns); for --objective clm, {\"text\"} per line (or .txt); for --objective sft, .jsonl with {\"prompt\", \"response\"} or {\"messages\": [...]} (OpenAI chat; the last assistant turn is learned) per line."),
    eval_path: Optional[Path] = typer.Option(None, "--eval", help="Validation data (same format): accuracy, or for clm the held-out perplexity (default: 5% of the training blocks)."),
    objective: Optional[Objective] = typer.Option(None, "--objective", help="classification (labelled texts, classification banks); clm (unlabelled domain text) or sft (instructions and chats, loss on the responses), causal-LM banks.", show_default="the bank's own"),
    kind: Kind = KindOpt,
    device: str = DeviceOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    settings: Optional[dict] = None,
) -> None:
    """Train a module for one task and add it; earlier tasks are left untouched. Classification tasks
    learn labels; on causal-LM banks, clm tasks learn a domain's text (held-out perplexity reported) and sft
    tasks learn instructions or chats (held-out response loss reported)."""
    opened = open_bank(bank, device)
    info = opened.add_task(name, train, eval=eval_path, progress=not quiet, kind=kind.value,
                           **({"objective": objective.value} if objective else {}), **(settings or {}))
    typer.echo(output.ADDED.get(info.objective, output.added_classification)(info))


@app.command("list")
def list_tasks(bank: Path = BankArg, as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List the bank's tasks in the order they were added."""
    opened = open_bank(bank)
    tasks = opened.tasks()
    if as_json:
        typer.echo(json.dumps({"bank": str(opened.path), "family": opened.family, "base": opened.base_id,
                               "tasks": [output.summary(t) for t in tasks]}, indent=2))
        return
    typer.echo(f"bank {opened.path}  base {opened.base_id}  {len(tasks)} task(s)")
    output.LIST[opened.family](opened, tasks)


@app.command()
def show(bank: Path = BankArg, name: str = typer.Argument(..., help="Task name.")) -> None:
    """Print one task's record as JSON: labels, kind, its training config and the resolved
    hyper-parameters, metrics, data fingerprints, file checksums."""
    info = open_bank(bank).task(name)
    typer.echo(json.dumps({**info.record, "path": str(info.path), "size_bytes": info.size_bytes}, indent=2, ensure_ascii=False))


@app.command()
def remove(bank: Path = BankArg, name: str = typer.Argument(..., help="Task name.")) -> None:
    """Remove a task and its files from the bank."""
    open_bank(bank).remove_task(name)
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
        fail(f"{len(report.problems)} problem(s) in bank {report.path}")
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
    ood_quantile: Optional[float] = typer.Option(None, "--ood-quantile", help="Out-of-scope threshold: about this share of a task's in-scope texts are refused (a text farther from its task's classes than that quantile of the task's own held-out texts gets no label); 0 turns it off.", show_default=f"bank.json's ({DEFAULT_OOD_QUANTILE})"),
    label_weight: Optional[float] = typer.Option(None, "--label-weight", help="The module's label probabilities are multiplied by the router's posterior over the task's labels to this power; 0: the module alone.", show_default=f"bank.json's ({DEFAULT_LABEL_WEIGHT}; banks made before it: 0)"),
    task: Optional[str] = typer.Option(None, "--task", help="Skip routing: use this task's module."),
    top_labels: int = typer.Option(0, "--top-labels", help="Also print each text's best N labels with their probabilities (--json: a 'labels' list; tab-separated: a 'labels' column)."),
    batch_size: int = typer.Option(DEFAULT_BATCH_SIZE, "--batch-size", help="Texts per forward pass."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    device: str = DeviceOpt,
) -> None:
    """Label texts over every label of every task, without being told the task.

    Tab-separated output with a header (label, task, score, text; tabs, newlines and backslashes in a
    field are written as \\t, \\n, \\\\). An out-of-scope text has an empty label and task; --json then
    gives the task and label it came closest to. With a 'label' field in --input, the accuracy is printed
    (on stderr; with --json, as a last line {"accuracy": ..., "texts": N})."""
    if bool(text) == (input_path is not None):
        fail("give texts with --text or a file with --input (one of the two)")
    texts, gold = (list(text), None) if text else load_texts(input_path, blank_lines=False)
    predictions = open_bank(bank, device).predict(texts, top_k=top_k, composition=composition.value,
                                              method=method.value if method else None, ood_quantile=ood_quantile,
                                              task=task, progress=input_path is not None and not quiet,
                                              batch_size=batch_size, top_labels=top_labels, label_weight=label_weight)
    if not as_json:
        typer.echo("\t".join(["label", "task", "score", "text"] + (["labels"] if top_labels else [])))
    for item, prediction in zip(texts, predictions):
        if as_json:
            typer.echo(json.dumps({"text": item, **prediction.to_dict()}, ensure_ascii=False))
            continue
        row = [output.tsv(prediction.label), output.tsv(prediction.task), f"{prediction.score:.3f}", output.tsv(item)]
        if top_labels:
            row.append(" ".join(f"{output.tsv(label)}:{p:.3f}" for label, _, p in prediction.labels))
        typer.echo("\t".join(row))
    if gold is not None:
        accuracy = sum(p.label == g for p, g in zip(predictions, gold)) / len(gold)
        if as_json:
            typer.echo(json.dumps({"accuracy": round(accuracy, 6), "texts": len(gold)}))
        else:
            typer.echo(f"accuracy: {accuracy:.2%} ({len(gold)} texts)", err=True)


@app.command("eval")
def evaluate(
    data_dir: Path = typer.Argument(..., help="train.jsonl + test.jsonl (labels dealt into tasks), or one sub-folder per task/domain with its own files.", show_default=False),
    out: Path = typer.Option(..., "--out", help="Output directory: results.json, report.md, accuracy_matrix.png and the bank (must not hold a bank yet)."),
    scenario: Scenario = typer.Option("class", "--scenario", help="class: new labels, no task id at test time; task: the task id is given; domain: same labels, new domains (sub-folders); instruction: sft task folders (train.jsonl/test.jsonl with prompt/response or messages, optional eval.json {\"metric\": \"exact_match\"|\"rouge_l\"}) on a causal-LM bank, answers generated and scored."),
    n_tasks: Optional[int] = typer.Option(None, "--tasks", help="Flat data: deal the labels into this many tasks (seeded shuffle).", show_default="5"),
    task_map: Optional[Path] = typer.Option(None, "--task-map", help='Flat data: JSON {"task": ["label", ...]} fixing tasks and their order (e.g. CLINC150 domains.json).'),
    order: Optional[str] = typer.Option(None, "--order", help="Sub-folders: comma-separated task order.", show_default="alphabetical"),
    kind: Kind = typer.Option(DEFAULT_KIND, "--kind", help=f"Module kind of every task and of the trained baselines: {listing(KINDS)}."),
    seed: int = typer.Option(0, "--seed", help="Seed for the task split and training (same seed, same numbers)."),
    baselines: Optional[str] = typer.Option(None, "--baselines", help="Comma-separated baselines to run beside the bank ('' for none). " + " ".join(f"{scenario}: {listing(protocol.baselines)}." for scenario, protocol in {"class/task/domain": PROTOCOLS['class'], "instruction": PROTOCOLS['instruction']}.items()), show_default="all of the scenario's"),
    max_train_per_class: Optional[int] = typer.Option(None, "--max-train-per-class", help="Cap training texts per label (seeded draw)."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model for the fresh bank.", show_default=f"minilm; instruction: {PROTOCOLS['instruction'].default_base}"),
    online: Optional[str] = typer.Option(None, "--online", help="hard | blurry: instead of whole tasks, a seeded stream from flat data learned with `learn` (hard: tasks one after another; blurry: Si-Blurry's mix), measured at --points positions: A_auc, A_last, forgetting, accuracy_curve.png; baselines ncm (online nearest class mean) and offline (add-task per task)."),
    points: int = typer.Option(DEFAULT_POINTS, "--points", help="--online: evaluation points, evenly spaced over the stream."),
    device: str = DeviceOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Continual-learning evaluation: add the tasks one by one to a fresh bank, measure after each
    (accuracy matrix, AA, BWT, FWT, forgetting, routing, oracle) and compare with baselines; or with
    --online, learn a stream and measure along it."""
    from adapterbank.evaluation import report

    if online is not None:
        from adapterbank.evaluation import online_protocol

        if scenario.value != "class" or task_map is not None or order is not None or max_train_per_class is not None:
            fail("--online builds its stream from flat data with --tasks; drop --scenario, --task-map, --order and --max-train-per-class")
        chosen = [b.strip() for b in baselines.split(",") if b.strip()] if baselines is not None else list(ONLINE_BASELINES)
        online_protocol.run(data_dir, out, online, base or PROTOCOLS['class'].default_base, kind.value, seed, n_tasks, points=points,
                                      baselines=chosen, device=device, progress=not quiet)
        typer.echo((out / "report.md").read_text(encoding="utf-8"))
        typer.echo(f"wrote {out / 'results.json'}, {out / 'report.md'}, {out / 'accuracy_curve.png'}")
        return
    protocol = PROTOCOLS[scenario.value]
    chosen = [b.strip() for b in baselines.split(",") if b.strip()] if baselines is not None else list(protocol.baselines)
    for name in chosen:
        if name not in protocol.baselines:
            fail(f"--baselines: unknown baseline {name!r} for --scenario {scenario.value}; choose from: {', '.join(protocol.baselines)}")
    options = {"n_tasks": n_tasks, "task_map": task_map, "max_train_per_class": max_train_per_class,
               "order": [o.strip() for o in order.split(",") if o.strip()] if order else None}
    results = protocol.run(data_dir, out, scenario.value, base or protocol.default_base, kind.value, seed, chosen, device,
                           not quiet, options)
    paths = report.write(results, out)
    typer.echo(report.markdown(results))
    typer.echo(f"wrote {paths['results']}, {paths['report']}, {paths['heatmap']}")


@app.command()
@setting_options([("", GenerationSettings)])
def generate(
    bank: Path = BankArg,
    prompt: Optional[List[str]] = typer.Option(None, "--prompt", "-p", help="A prompt (repeatable)."),
    input_path: Optional[Path] = typer.Option(None, "--input", "-i", help=".jsonl/.csv with a 'text' field, or .txt with one prompt per line."),
    chat: Optional[Path] = typer.Option(None, "--chat", help="Conversations instead of prompts: .json with one conversation (a list of OpenAI chat messages) or a list of them, or .jsonl with {\"messages\": [...]} per line; the chat template is applied and routing reads the user turns."),
    task: Optional[str] = typer.Option(None, "--task", help="Skip routing: every prompt uses this task's module."),
    sample: bool = typer.Option(False, "--sample", help="Sample (with --temperature, --top-p) instead of greedy decoding."),
    ood_quantile: Optional[float] = typer.Option(None, "--ood-quantile", help="A prompt less similar to its closest task than this fraction of the task's own data goes to the base; 0 turns it off.", show_default=f"bank.json's ({DEFAULT_PROMPT_OOD_QUANTILE})"),
    stream: bool = typer.Option(False, "--stream", help="Print the text as it is generated (one prompt or conversation)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per prompt (JSON Lines)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    device: str = DeviceOpt,
    settings: Optional[dict] = None,
) -> None:
    """Answer prompts on a causal-LM bank, each with the module of the task it is closest to (mixed
    batches): instruction (sft) modules get the prompt in their chat layout, domain (clm) modules and
    the base continue it as written. Prompts no task matches go to the base alone."""
    from adapterbank.causal.chat import chat_prompt, load_conversations

    if sum(x is not None and x != [] for x in (prompt, input_path, chat)) != 1:
        fail("give prompts with --prompt, a file with --input, or conversations with --chat (one of the three)")
    opened = open_bank(bank, device)
    options = {"task": task, "do_sample": sample, "ood_quantile": ood_quantile, **(settings or {})}
    if chat is not None:
        pairs = [chat_prompt(opened.base.tokenizer, messages, i + 1) for i, messages in enumerate(load_conversations(chat))]
        prompts, shown = [p for p, _ in pairs], [u for _, u in pairs]
        options.update(route_texts=shown, rendered=True)
    else:
        prompts = list(prompt) if prompt else load_texts(input_path, blank_lines=False)[0]
        shown = prompts
    if stream:
        if len(prompts) != 1 or as_json:
            fail("--stream prints one prompt's text as it comes: give one prompt or conversation, without --json")
        for piece in opened.generate(prompts, stream=True, **options):
            typer.echo(piece.text, nl=False)
        typer.echo()
        return
    results = opened.generate(prompts, progress=input_path is not None and not quiet, **options)
    for item, result in zip(shown, results):
        if as_json:
            typer.echo(json.dumps({"prompt": item, **result.to_dict()}, ensure_ascii=False))
        elif chat is not None:
            typer.echo(f"[{result.task or 'base'} @ {result.base_version}] {result.text}")
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
        fail(f"--weights: expected comma-separated numbers, got {weights!r}")
    record = open_bank(bank, device).merge(names, method=method.value, weights=parsed, seed=seed, retarget=retarget,
                                       **(settings or {}))
    lineage = record["lineage"]
    typer.echo(f"merged {', '.join(names)} into base {lineage['parent']} with {lineage['method']}: new base version "
               f"{record['version']} (now current; {lineage['weights_changed']} weight matrices changed)")


@app.command()
def versions(bank: Path = BankArg, as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List a causal-LM bank's base versions with their lineage; * marks the current one."""
    rows = open_bank(bank).base_versions()
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
    opened = open_bank(bank)
    opened.rollback(version)
    typer.echo(f"current base version is now {opened.current_base_version}")


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


from . import handoff  # noqa: E402,F401 - registers export, import and serve after the bank commands (help order)
from . import online  # noqa: E402,F401 - registers learn


@app.callback(invoke_without_command=True)
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        typer.echo(f"adapterbank {__version__}")
        raise typer.Exit()


def run(argv: Optional[List[str]] = None) -> int:
    """The CLI as the console script runs it; returns the exit code. Every failure is one line on stderr:
    `error: ...` with exit 2 for a usage error (a bad option value, click's convention) and 1 for anything
    else the user can act on (bad data, a bank problem, a file-system error); warnings print as one
    `warning: ...` line. Only a bug in adapterbank shows a traceback."""
    from safetensors import SafetensorError
    from typer.exceptions import TyperException  # typer's own click: usage errors, bad parameters

    def one_line(text: object) -> str:
        return " ".join(str(text).split())

    def show_warning(message, category, *_args, **_kwargs) -> None:
        typer.echo(f"warning: {one_line(message)}", err=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # libraries' deprecation notices are not the user's business here
        warnings.simplefilter("always", AdapterBankWarning)
        warnings.showwarning = show_warning
        try:
            result = app(args=argv, standalone_mode=False, prog_name="adapterbank")
            return result if isinstance(result, int) else 0
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            return 1
        except TyperException as exc:
            context = getattr(exc, "ctx", None)
            where = f"{context.command_path}: " if context is not None else ""
            typer.echo(f"error: {where}{one_line(exc.format_message())} (see --help)", err=True)
            return getattr(exc, "exit_code", 2)
        except AdapterBankError as exc:
            typer.echo(f"error: {one_line(exc)}", err=True)
            return 1
        except OSError as exc:  # the file system refused something the library did not wrap: still one line
            typer.echo(f"error: {exc.filename or ''}{': ' if exc.filename else ''}{one_line(exc.strerror or exc)}", err=True)
            return 1
        except SafetensorError as exc:
            typer.echo(f"error: {one_line(exc)}", err=True)
            return 1
        except KeyboardInterrupt:
            typer.echo("interrupted; the bank is unchanged unless a task was reported added", err=True)
            return 130


def main() -> None:
    """Console entry point."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(run())
