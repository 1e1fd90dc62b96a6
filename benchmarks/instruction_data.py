"""The continual-instruction benchmark's tasks, built from ../shared/data: one folder per task in the sft format.

Each folder holds `train.jsonl` and `test.jsonl` (one `{"prompt": ..., "response": ...}` a line) and an `eval.json`
naming the metric. Three label tasks are answered with the label's name exactly as in the data (CLINC150 travel
intents, Banking77 restricted to 20 seeded intents, TREC question types; exact match) and one is free form
(SciTLDR abstracts: write the opening sentence from the sentences that follow it, up to 400 characters;
ROUGE-L). The numeric prefix of each folder name is the learning order. Train examples come from train splits, test examples from test splits (validation is
unused), sampled balanced over labels with `random.Random(seed)`: the same seed gives the same files.

    python benchmarks/instruction_data.py --out /tmp/instruction-tasks
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MAX_CONTEXT_CHARS = 400  # of the abstract after its opening sentence: the free-form task's cost grows with the prompt


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _balanced(rows: list[dict], labels: list[str], cap: int, rng: random.Random) -> list[dict]:
    """Round-robin over the labels (each label's rows shuffled, label order shuffled) until `cap` rows."""
    labels = sorted(labels)
    rng.shuffle(labels)  # which labels get one more when cap is not a multiple of len(labels)
    pools = {label: [r for r in rows if r["label"] == label] for label in labels}
    for label in labels:
        rng.shuffle(pools[label])
    out: list[dict] = []
    while len(out) < cap and any(pools.values()):
        for label in labels:
            if pools[label] and len(out) < cap:
                out.append(pools[label].pop())
    return out


def _label_task(source: str, labels: list[str] | None, instruction: str, field: str, train: int, test: int,
                rng: random.Random) -> dict[str, list[dict]]:
    splits = {}
    for split, cap in (("train", train), ("test", test)):
        rows = _read(DATA / source / f"{split}.jsonl")
        chosen = labels or sorted({r["label"] for r in rows})
        splits[split] = [{"prompt": f"{instruction}\n{field}: {r['text']}", "response": r["label"]}
                         for r in _balanced(rows, chosen, cap, rng)]
    return splits


def _opening_sentence_task(train: int, test: int, rng: random.Random) -> dict[str, list[dict]]:
    splits = {}
    for split, cap in (("train", train), ("test", test)):
        rows = _read(DATA / "scitldr_abstracts" / f"{split}.jsonl")
        rng.shuffle(rows)
        examples = []
        for row in rows:
            text = " ".join(row["text"].split())
            sentences = re.split(r"(?<=\.)\s+(?=[A-Z])", text)  # ". " followed by a capital: a sentence boundary
            if len(sentences) < 3 or len(sentences[0]) > 220:
                continue
            rest = sentences[1]
            for sentence in sentences[2:]:  # the sentences that follow, up to MAX_CONTEXT_CHARS
                if len(rest) + 1 + len(sentence) > MAX_CONTEXT_CHARS:
                    break
                rest += " " + sentence
            examples.append({"prompt": "Write the opening sentence of the abstract that continues as follows.\n" + rest,
                             "response": sentences[0]})
            if len(examples) == cap:
                break
        splits[split] = examples
    return splits


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def build(out_dir: Path, train_per_task: int = 200, test_per_task: int = 30, seed: int = 0) -> list[str]:
    """Write the task folders under `out_dir`; returns their names in learning order."""
    rng = random.Random(seed)
    n, m = train_per_task, test_per_task
    domains = json.loads((DATA / "clinc150" / "domains.json").read_text(encoding="utf-8"))
    banking = sorted({r["label"] for r in _read(DATA / "banking77" / "train.jsonl")})
    tasks = {
        "1_clinc_travel": (_label_task("clinc150", domains["travel"], "Which travel intent is this request? Answer "
                                       "with the intent name.", "Request", n, m, rng), "exact_match"),
        "2_banking77": (_label_task("banking77", sorted(rng.sample(banking, 20)), "Which banking intent is this "
                                    "customer message? Answer with the intent name.", "Message", n, m, rng), "exact_match"),
        "3_trec": (_label_task("sentence_suite/trec", None, "What type of answer does this question ask for? Answer "
                               "with the type.", "Question", n, m, rng), "exact_match"),
        "4_scitldr": (_opening_sentence_task(n, m, rng), "rouge_l"),
    }
    for name, (splits, metric) in tasks.items():
        folder = Path(out_dir) / name
        folder.mkdir(parents=True, exist_ok=True)
        for split, rows in splits.items():
            _write(folder / f"{split}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        _write(folder / "eval.json", json.dumps({"metric": metric}) + "\n")
    return list(tasks)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Build the continual-instruction benchmark's task folders.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train-per-task", type=int, default=200)
    parser.add_argument("--test-per-task", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(build(args.out, args.train_per_task, args.test_per_task, args.seed)))
