"""How the CLI prints results: add-task's summary per objective, `list` per bank family, tab-separated
fields. Kept apart from the commands so main.py stays a thin layer of argument parsing."""

from __future__ import annotations

from typing import Optional

import typer

from adapterbank import AdapterBank, CLMConfig, ClassificationConfig, SFTConfig, TaskInfo


def added_classification(info: TaskInfo) -> str:
    metrics = info.record["metrics"]
    lines = [f"added task {info.name}: {len(info.labels)} label(s), {info.kind or 'router only'}, "
             f"{metrics['add_task_seconds']:.1f} s, {info.size_bytes / 1024:.0f} KiB"]
    if "eval_accuracy" in metrics:
        lines.append(f"validation accuracy: {metrics['eval_accuracy']:.2%} ({info.record['data']['eval_examples']} texts)")
    search = metrics.get("depth_search")
    if search:  # the depth search: what it measured, and why it stopped where it did
        measured = ", ".join(f"{depth} {accuracy:.2%}" for depth, accuracy in search.get("held_out_accuracy", {}).items())
        said = [f"held-out accuracy by depth {measured} ({search['held_out_texts']} texts)"] if measured else []
        lines.append(f"depth {search['chosen']} (auto): " + "; ".join(said + ([search["note"]] if "note" in search else [])))
    return "\n".join(lines)


def added_clm(info: TaskInfo) -> str:
    metrics = info.record["metrics"]
    return (f"added task {info.name}: clm {info.kind} on base {info.record['base']['version']}, {metrics['train_tokens']:,} "
            f"tokens at {metrics['train_tokens_per_s']:.0f} tokens/s, {metrics['add_task_seconds']:.1f} s, "
            f"{info.size_bytes / 1024:.0f} KiB\n"
            f"held-out perplexity: {metrics['perplexity_before']:.2f} -> {metrics['perplexity_after']:.2f} "
            f"({metrics['held_out_tokens']:,} tokens, {metrics['held_out_source']})")


def added_sft(info: TaskInfo) -> str:
    metrics = info.record["metrics"]
    return (f"added task {info.name}: sft {info.kind} on base {info.record['base']['version']}, "
            f"{info.record['data']['train_examples']:,} examples, {metrics['train_tokens']:,} tokens at "
            f"{metrics['train_tokens_per_s']:.0f} tokens/s, {metrics['add_task_seconds']:.1f} s, {info.size_bytes / 1024:.0f} KiB\n"
            f"held-out response loss: {metrics['response_loss_before']:.3f} -> {metrics['response_loss_after']:.3f} "
            f"({metrics['held_out_examples']} examples, {metrics['held_out_source']})")


ADDED = {ClassificationConfig.objective: added_classification, CLMConfig.objective: added_clm,
         SFTConfig.objective: added_sft}


def _list_classifier(bank: AdapterBank, tasks: list[TaskInfo]) -> None:
    for task in tasks:
        row = summary(task)
        accuracy = f"{row['eval_accuracy']:.1%}" if row["eval_accuracy"] is not None else "-"
        typer.echo(f"  {task.name:<20} {row['kind'] or 'router':<7} {len(task.labels):>4} labels  "
                   f"eval {accuracy:>6}  {row['size_bytes'] / 1024:>6.0f} KiB")


def _list_causal(bank: AdapterBank, tasks: list[TaskInfo]) -> None:
    current, merged = bank.current_base_version, bank.merged_modules()
    typer.echo(f"current base version {current}")
    for task in tasks:
        row, trained_on = summary(task), task.record["base"]["version"]
        flag = "" if trained_on == current else f"  (trained on {trained_on}: served on {trained_on}, merge needs --retarget)"
        if task.record.get("id") in merged:
            flag = f"  (merged into {merged[task.record['id']]}: the current base {current} contains it)"
        metrics = task.record.get("metrics", {})
        if "perplexity_before" in metrics:
            detail = f"perplexity {metrics['perplexity_before']:.2f} -> {metrics['perplexity_after']:.2f}"
        elif "response_loss_before" in metrics:
            detail = f"response loss {metrics['response_loss_before']:.3f} -> {metrics['response_loss_after']:.3f}"
        else:
            detail = f"from {task.record.get('imported', {}).get('from', '?')}"
        typer.echo(f"  {task.name:<20} {task.objective:<8} base {trained_on:<4} {detail}  {row['size_bytes'] / 1024:>6.0f} KiB{flag}")


LIST = {"classifier": _list_classifier, "causal": _list_causal}


def tsv(value: Optional[str]) -> str:
    """A field of tab-separated output: empty for None; backslash, tab, newline and CR escaped."""
    if value is None:
        return ""
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def summary(task: TaskInfo) -> dict:
    return {"name": task.name, "objective": task.objective, "kind": task.kind, "labels": task.labels,
            "eval_accuracy": task.record.get("metrics", {}).get("eval_accuracy"), "size_bytes": task.size_bytes}
