"""Online learning (`adapterbank eval --online`) on CLINC150 (15 tasks x 10 intents) and Banking77 (7 x 11),
hard and blurry boundaries, against online NCM and the offline class-incremental bank. Writes results.json,
report.md and accuracy_curve.png per run under --out/online/<dataset>-<mode>/ and prints a JSON summary
with the issue's targets.

    python benchmarks/online.py [--datasets clinc150,banking77] [--modes hard,blurry] [--points 10] [--seed 0]

Each run is what `adapterbank eval DATA --online MODE --tasks T --out DIR` does (the banks live in a temp dir).
Targets: A_last within 2 points of the offline bank; A_auc at least 3 points over online NCM; ingest
(learn's time without the training it triggers) at least 200 examples/s.
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

from adapterbank.evaluation import online_protocol  # noqa: E402

from common import DATA_ROOT, TASK_COUNTS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="clinc150,banking77")
    parser.add_argument("--modes", default="hard,blurry")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--points", type=int, default=online_protocol.DEFAULT_POINTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    summary, started = {"cpu_count": os.cpu_count(), "runs": {}}, time.perf_counter()
    for dataset in args.datasets.split(","):
        for mode in args.modes.split(","):
            work = Path(tempfile.mkdtemp(prefix=f"online-{dataset}-{mode}-"))
            try:
                results = online_protocol.run(args.data_root / dataset, work / "out", mode, "minilm", "lora", args.seed,
                                              TASK_COUNTS[dataset], points=args.points, device=args.device)
                keep = args.out / "online" / f"{dataset}-{mode}"
                shutil.rmtree(keep, ignore_errors=True)
                keep.mkdir(parents=True)
                for name in ("results.json", "report.md", "accuracy_curve.png"):
                    shutil.copyfile(work / "out" / name, keep / name)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            summary["runs"][f"{dataset}-{mode}"] = {
                "a_auc": results["a_auc"], "a_last": results["a_last"], "forgetting": results["forgetting"],
                "ncm": results["ncm"], "offline_a_last": results["offline"]["a_last"], "modules": results["modules"],
                "ingest_examples_per_s": results["ingest_examples_per_s"], "seconds": results["seconds"],
                "targets": {"a_last_within_2_of_offline": results["a_last"] >= results["offline"]["a_last"] - 0.02,
                            "a_auc_3_over_ncm": results["a_auc"] >= results["ncm"]["a_auc"] + 0.03,
                            "ingest_200_per_s": results["ingest_examples_per_s"] >= 200}}
            print(json.dumps({f"{dataset}-{mode}": summary["runs"][f"{dataset}-{mode}"]}), flush=True)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
