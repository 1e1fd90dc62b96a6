"""Writing a continual-learning run's results: results.json, report.md and accuracy_matrix.png.

Each file is written atomically (store.files.write_atomic), so a reader never sees half a report.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..store.files import write_atomic

RESULTS_FILE, REPORT_FILE, HEATMAP_FILE = "results.json", "report.md", "accuracy_matrix.png"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.1f}"


def markdown(results: dict) -> str:
    """The report: a summary table (percent, as in papers), the accuracy matrix, baselines, timings."""
    names = results["task_names"]
    lines = [f"# Continual-learning evaluation ({results['scenario']}-incremental, {len(names)} tasks)", "",
             f"Base `{results['config']['base']}`, {results['config']['kind']} modules, seed {results['config']['seed']}. "
             + ("Scores in percent (per task: " + ", ".join(f"{t} {m}" for t, m in results["task_metrics"].items()) + "; "
              "exact_match after normalisation, rouge_l = ROUGE-L F1); BWT, FWT and forgetting in points."
              if results.get("task_metrics") else "Accuracies in percent; BWT, FWT and forgetting in points."), "",
             "| method | AA | BWT | FWT | forgetting | routing | oracle (task id given) |",
             "|---|---|---|---|---|---|---|",
             f"| adapterbank | {_pct(results['average_accuracy'])} | {_signed(results['bwt'])} | {_signed(results['fwt'])} | "
             f"{_pct(results['forgetting'])} | {_pct(results['routing_accuracy'])} | {_pct(results['oracle_accuracy'])} |"]
    for name, values in results["baselines"].items():
        lines.append(f"| {name} | {_pct(values['average_accuracy'])} | {_signed(values.get('bwt'))} | "
                     f"{_signed(values.get('fwt'))} | {_pct(values.get('forgetting'))} | – | – |")
    lines += ["", "## Accuracy matrix R[i][j]: accuracy (score) on task j (column) after learning task i (row)", "",
              "| after \\ on | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for name, row in zip(names, results["accuracy_matrix"]):
        lines.append(f"| {name} | " + " | ".join(_pct(v) if v is not None else "" for v in row) + " |")
    lines += ["", "## Time and memory", "", "| stage | add-task s | module depth | eval s | peak RSS MB |",
              "|---|---|---|---|---|"]
    lines += [f"| {s['task']} | {s['add_task_s']} | {s.get('depth') or '–'} | {s['eval_s']} | {s['peak_rss_mb']} |"
              for s in results["stages"]]
    lines += ["", "Wall time: " + ", ".join(f"{k} {v}" for k, v in results["wall_s"].items()) +
              f"; peak RSS {results['peak_rss_mb']} MB.", ""]
    return "\n".join(lines)


def heatmap(results: dict, path: Path) -> None:
    """R as a heatmap, tasks in order, values printed in the cells (blank where not measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = results["task_names"]
    values = np.array([[np.nan if v is None else 100 * v for v in row] for row in results["accuracy_matrix"]])
    size = len(names)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * size + 2), max(3.5, 0.5 * size + 1.5)), dpi=120)
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=100)
    ax.set_xticks(range(size), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(size), names, fontsize=8)
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("after learning task i")
    ax.set_title(f"Accuracy (%), {results['scenario']}-incremental, AA {_pct(results['average_accuracy'])}")
    if size <= 20:
        for i in range(size):
            for j in range(size):
                if not np.isnan(values[i, j]):
                    ax.text(j, i, f"{values[i, j]:.0f}", ha="center", va="center", fontsize=7,
                            color="black" if values[i, j] > 60 else "white")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def write(results: dict, out_dir: Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"results": out_dir / RESULTS_FILE, "report": out_dir / REPORT_FILE, "heatmap": out_dir / HEATMAP_FILE}
    write_atomic(paths["results"], lambda p: p.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8"))
    write_atomic(paths["report"], lambda p: p.write_text(markdown(results), encoding="utf-8"))
    write_atomic(paths["heatmap"], lambda p: heatmap(results, p))
    return paths
