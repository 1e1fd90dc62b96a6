"""Shared fixtures: tiny random BERT bases (milliseconds per step) and small synthetic tasks."""

from __future__ import annotations

import hashlib
import json
import os
import random
import string
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _write_tiny_bert(directory: Path, seed: int) -> Path:
    """A 2-layer, 32-wide BERT with a character-level WordPiece vocab, so any ASCII text tokenizes."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    symbols = string.ascii_lowercase + string.digits + string.punctuation
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *symbols, *("##" + c for c in symbols)]
    directory.mkdir(parents=True, exist_ok=True)
    # transformers 5 ignores vocab_file= here; the vocab must be passed as a mapping.
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    assert tokenizer.tokenize("ab") == ["a", "##b"]
    tokenizer.save_pretrained(directory)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=256)
    BertModel(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> str:
    return str(_write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), seed=0))


@pytest.fixture(scope="session")
def other_tiny_base(tmp_path_factory) -> str:
    """Same architecture and tokenizer as tiny_base, different weights."""
    return str(_write_tiny_bert(tmp_path_factory.mktemp("tiny-bert-other"), seed=1))


# Each task draws its words from its own letters, and each label has a keyword, so even a random
# tiny encoder separates tasks (router) and a trained module separates labels.
TASK_LETTERS = {"alpha": "abcdef", "beta": "ghijkl", "gamma": "mnopqr"}
TASK_LABELS = {"alpha": ["a_one", "a_two"], "beta": ["b_one", "b_two", "b_three"], "gamma": ["g_one"]}


def synthetic_rows(task: str, per_label: int, seed: int) -> list[dict]:
    rng = random.Random(f"{task}-{seed}")
    letters = TASK_LETTERS[task]
    rows = []
    for number, label in enumerate(TASK_LABELS[task]):
        keyword = letters[number] * 6
        for _ in range(per_label):
            filler = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 5))) for _ in range(rng.randint(2, 5))]
            filler.insert(rng.randint(0, len(filler)), keyword)
            rows.append({"text": " ".join(filler), "label": label})
    rng.shuffle(rows)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture()
def task_files(tmp_path) -> dict[str, tuple[Path, Path]]:
    """(train, test) JSONL per synthetic task."""
    files = {}
    for task in TASK_LETTERS:
        train = write_jsonl(tmp_path / f"{task}_train.jsonl", synthetic_rows(task, per_label=24, seed=0))
        test = write_jsonl(tmp_path / f"{task}_test.jsonl", synthetic_rows(task, per_label=8, seed=1))
        files[task] = (train, test)
    return files


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path (to prove nothing changed)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}
