"""The full continual-learning protocol on CLINC150 (15 tasks x 10 intents) and Banking77 (7 x 11), and
the domain-incremental sentence_suite (mr -> cr -> mpqa: one polarity label set, three domains), with
every registered baseline. Writes results.json, report.md and accuracy_matrix.png per
dataset under --out and prints a JSON summary.

    python benchmarks/continual_eval.py [--datasets clinc150,banking77] [--out benchmarks/results] [--seed 0]
        [--max-train-per-class N] [--device cpu] [--baselines joint,ncm]
    python benchmarks/continual_eval.py --datasets sentence_suite          # the domain-incremental sequence
    python benchmarks/continual_eval.py --add-baselines replay,ewc     # only those, merged into the results

Labels are dealt into tasks by the seeded shuffle of `adapterbank eval --tasks T` (the same as
`adapterbank eval ../shared/data/clinc150 --tasks 15 --out DIR`); the bank lives in a temp dir.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from adapterbank.evaluation import protocol as evaluation, report  # noqa: E402
from adapterbank.evaluation.scenarios import load_scenario  # noqa: E402

from common import DATA_ROOT, DOMAIN_SEQUENCES, TASK_COUNTS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="clinc150,banking77")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-train-per-class", type=int, default=None)
    parser.add_argument("--progress", action="store_true", help="show progress bars (stderr)")
    parser.add_argument("--device", default="cpu", help="cpu (the README's figures), cuda, auto")
    parser.add_argument("--baselines", default=None,
                        help="comma-separated baselines to run beside the bank (default: every registered one)")
    parser.add_argument("--add-baselines", default=None,
                        help="comma-separated baselines to run alone and add to the existing results in --out "
                             "(e.g. replay,ewc after they were registered), without re-running the bank")
    args = parser.parse_args()
    if args.add_baselines:
        return add_baselines(args)
    summary = {}
    baselines = _listed(args.baselines) if args.baselines else None  # None: every registered one
    for name in _listed(args.datasets):
        if name not in TASK_COUNTS and name not in DOMAIN_SEQUENCES:
            parser.error(f"unknown dataset {name!r}; choose from: {', '.join([*TASK_COUNTS, *DOMAIN_SEQUENCES])}")
        started = time.perf_counter()
        dropped = 0
        if name in DOMAIN_SEQUENCES:
            root, dropped = without_blank_texts(args.data_root / name, DOMAIN_SEQUENCES[name])
            tasks = load_scenario(root, "domain", order=DOMAIN_SEQUENCES[name], seed=args.seed,
                                  max_train_per_class=args.max_train_per_class)
        else:
            tasks = load_scenario(args.data_root / name, "class", n_tasks=TASK_COUNTS[name], seed=args.seed,
                                  max_train_per_class=args.max_train_per_class)
        workdir = Path(tempfile.mkdtemp(prefix=f"adapterbank-eval-{name}-"))
        try:
            scenario = "domain" if name in DOMAIN_SEQUENCES else "class"
            results = evaluation.run(tasks, args.out / name, scenario, seed=args.seed, device=args.device,
                                     baselines=baselines, progress=args.progress, bank_dir=workdir / "bank")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        report.write(results, args.out / name)
        summary[name] = {key: results[key] for key in ("average_accuracy", "bwt", "fwt", "forgetting",
                                                       "routing_accuracy", "oracle_accuracy", "peak_rss_mb")}
        summary[name]["baselines"] = {k: {m: v.get(m) for m in ("average_accuracy", "bwt", "forgetting")}
                                      for k, v in results["baselines"].items()}
        summary[name]["wall_s"] = results["wall_s"]
        summary[name]["blank_texts_dropped"] = dropped
        summary[name]["run_s"] = round(time.perf_counter() - started, 1)
        summary[name]["report"] = str(args.out / name / report.REPORT_FILE)
    print(json.dumps(summary, indent=2))


def _listed(text: str) -> list[str]:
    """The names in a comma-separated option, blanks dropped."""
    return [part.strip() for part in text.split(",") if part.strip()]


def without_blank_texts(root: Path, folders: list[str]) -> tuple[Path, int]:
    """A temp copy of `folders` under `root` without the rows whose text is blank (sentence_suite/cr has 4,
    which the loader rightly refuses), and how many were dropped."""
    out, dropped = Path(tempfile.mkdtemp(prefix="adapterbank-domain-")), 0
    for folder in folders:
        (out / folder).mkdir()
        for split in sorted((root / folder).glob("*.jsonl")):
            rows = [line for line in split.read_text(encoding="utf-8").splitlines() if line.strip()]
            kept = [line for line in rows if json.loads(line)["text"].strip()]
            dropped += len(rows) - len(kept)
            (out / folder / split.name).write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    return out, dropped


def add_baselines(args) -> None:
    """Run only the named baselines on each dataset's tasks (same seed and split) and merge them into
    --out/<dataset>/results.json and report.md."""
    from adapterbank import AdapterBank
    from adapterbank.classify.config import ClassificationConfig
    from adapterbank.evaluation import baselines as baseline_lib
    from adapterbank.evaluation.baseline_models import Setting

    names = _listed(args.add_baselines)
    summary = {}
    for name in _listed(args.datasets):
        path = args.out / name / "results.json"
        results = json.loads(path.read_text(encoding="utf-8"))
        tasks = load_scenario(args.data_root / name, "class", n_tasks=TASK_COUNTS[name], seed=args.seed,
                              max_train_per_class=args.max_train_per_class)
        if results["tasks"] != [task.labels for task in tasks]:
            raise SystemExit(f"{path}: its tasks are not this split (another seed or --max-train-per-class?)")
        workdir = Path(tempfile.mkdtemp(prefix=f"adapterbank-baselines-{name}-"))
        try:
            bank = AdapterBank.create(workdir / "bank", device=args.device)
            config = ClassificationConfig(kind=results["config"]["kind"], seed=args.seed)
            shared = baseline_lib.Shared(Setting(tasks, bank.base, bank.upper_layers, config, task_given=False,
                                                 progress=args.progress))
            for baseline in names:
                started = time.perf_counter()
                results["baselines"][baseline] = baseline_lib.BASELINES[baseline].run(shared)
                results["baselines"][baseline]["wall_s"] = round(time.perf_counter() - started, 1)
                results["wall_s"][f"{baseline}_s"] = results["baselines"][baseline]["wall_s"]
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        report.write(results, args.out / name)
        summary[name] = {b: {m: results["baselines"][b].get(m) for m in ("average_accuracy", "bwt", "forgetting", "wall_s")}
                         for b in names}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
