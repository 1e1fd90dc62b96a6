"""Commands that put a bank in front of other software: `export` (checkpoints, PEFT directories, every
module with the engine command lines), `import` (an adapter trained elsewhere) and `serve` (HTTP)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from adapterbank.serve.limits import DEFAULT_TOKEN_LIMIT

from .common import BankArg, DeviceOpt, app, fail, open_bank


@app.command()
def export(
    bank: Path = BankArg,
    out: Path = typer.Option(..., "--out", help="Output directory (must not exist, or be empty)."),
    task: Optional[str] = typer.Option(None, "--task", help="Merge this task's module into the exported model."),
    base_version: Optional[str] = typer.Option(None, "--base-version", help="Causal banks: base version to export.", show_default="the task's own, else the current"),
    peft: bool = typer.Option(False, "--peft", help="Write the --task module as a PEFT directory (PEFT, vLLM, LoRAX) instead of a merged model."),
    every: bool = typer.Option(False, "--all", help="With --peft: every module, as OUT/<task>/, plus OUT/serving.json with the vLLM and LoRAX command lines that load them."),
    base_name: Optional[str] = typer.Option(None, "--base-name", help="--peft: the base_model_name_or_path to write (e.g. the hub id, for an engine that has the original model).", show_default="a folder that loads offline: the packaged MiniLM, or the bank's base version"),
    device: str = DeviceOpt,
) -> None:
    """Write a plain Hugging Face checkpoint (config, tokenizer, safetensors) that transformers loads
    without adapterbank: AutoModelForCausalLM for causal banks, AutoModel (+ head.safetensors,
    labels.json) for classification banks; `adapterbank.load_classifier(OUT).predict(texts)` answers with
    an exported classification task (merged or --peft)."""
    if every:
        if not peft or task is not None or base_version is not None:
            fail("--all exports every module as PEFT directories: use it with --peft, without --task or --base-version")
        written = open_bank(bank, device).export_all(out, base_name=base_name)
        serving = json.loads((written / "serving.json").read_text(encoding="utf-8"))
        typer.echo(f"exported {sum(len(b['modules']) for b in serving['bases'])} PEFT modules to {written}")
        for group in serving["bases"]:
            if "vllm" in group:
                typer.echo(f"vLLM:  {group['vllm']}\nLoRAX: {group['lorax']['launch']}  (requests: see serving.json)")
        return
    written = open_bank(bank, device).export(out, task=task, base_version=base_version, peft=peft, base_name=base_name)
    typer.echo(f"exported {'PEFT module' if peft else 'checkpoint'} to {written}")


@app.command("import")
def import_(
    bank: Path = BankArg,
    name: str = typer.Argument(..., help="Task name for the imported module."),
    adapter: Path = typer.Option(..., "--adapter", help="A PEFT adapter folder (adapter_config.json + adapter_model.safetensors)."),
    examples: Path = typer.Option(..., "--examples", help="What the adapter should answer, at least 8: for a causal bank prompts (.jsonl/.csv with 'text', or .txt, one per line); for a classification bank labelled texts (.jsonl/.csv with 'text' and 'label', every label present). The router learns from them."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Classification banks: the adapter's label names, comma-separated, in the order of its classifier's outputs (needed when the folder has no labels.json)."),
    force_base: bool = typer.Option(False, "--force-base", help="Accept an adapter whose config names another base model (you know the weights are the same)."),
    device: str = DeviceOpt,
) -> None:
    """Bring an existing PEFT adapter into a bank as a routed task, checked against the base (target
    modules, tensor shapes, base name) and written and checksummed like a trained module. Causal banks:
    LoRA or prompt tuning. Classification banks: a plain PEFT SEQ_CLS run on a BERT classifier (LoRA or
    IA3 on the bank's upper layers, classifier saved through modules_to_save), or a module another bank
    exported with --peft."""
    names = [part.strip() for part in labels.split(",")] if labels is not None else None
    info = open_bank(bank, device).import_adapter(name, adapter, examples, force_base=force_base, labels=names)
    accuracy = info.record["metrics"].get("examples_accuracy")
    typer.echo(f"imported {info.name}: {info.kind} from {info.record['imported']['from']}, routed by "
               f"{info.record['data']['router_examples']} example inputs"
               + (f"; {len(info.labels)} labels, accuracy on the examples {accuracy:.3f}" if accuracy is not None else ""))


@app.command()
def serve(
    bank: Path = BankArg,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind: loopback unless you say otherwise (0.0.0.0 for every interface)."),
    port: int = typer.Option(8000, "--port", help="TCP port (0: any free port, printed at start)."),
    api_key_file: Optional[Path] = typer.Option(None, "--api-key-file", help="A file holding the API key: every endpoint but /healthz then needs 'Authorization: Bearer <key>'."),
    max_tokens: int = typer.Option(DEFAULT_TOKEN_LIMIT, "--max-tokens", help="The most tokens one request may ask to generate."),
    upstream: Optional[str] = typer.Option(None, "--upstream", help="An OpenAI-compatible engine (vLLM, LoRAX, another adapterbank serve) that generates: the bank routes and forwards each request with model set to the chosen module."),
    upstream_model: Optional[str] = typer.Option(None, "--upstream-model", help="The upstream's name for the bare base model (what vLLM was started with).", show_default="base"),
    upstream_key_file: Optional[Path] = typer.Option(None, "--upstream-key-file", help="A file holding the upstream's API key (sent as Authorization: Bearer)."),
    device: str = DeviceOpt,
) -> None:
    """Serve the bank over HTTP: OpenAI-compatible /v1/completions, /v1/chat/completions and /v1/models
    (model 'auto' routes each request by its content), /v1/classify, /v1/route, /healthz. Tasks added or
    removed while it runs are served without a restart."""
    from adapterbank.serve.server import serve_bank

    serve_bank(bank, host=host, port=port, api_key_file=api_key_file, max_tokens=max_tokens, device=device,
               upstream=upstream, upstream_model=upstream_model, upstream_key_file=upstream_key_file, echo=typer.echo)
