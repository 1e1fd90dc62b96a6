"""Shared fixtures and helpers: tiny random BERT and Llama bases (milliseconds per step), small synthetic
tasks and domain corpora, file hashes, and the CLI as the console script runs it."""

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
# the device the bank tests run on; CI has only the CPU, a GPU check runs ADAPTERBANK_TEST_DEVICE=cuda pytest
DEVICE = os.environ.get("ADAPTERBANK_TEST_DEVICE", "cpu")


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
TASK_LETTERS = {"alpha": "abcdef", "beta": "ghijkl", "gamma": "mnopqr", "delta": "stuvwx"}
TASK_LABELS = {"alpha": ["a_one", "a_two"], "beta": ["b_one", "b_two", "b_three"], "gamma": ["g_one"],
               "delta": ["d_one", "d_two"]}
FIXTURE_TASKS = ("alpha", "beta", "gamma")  # the tasks of `task_files`; delta is a spare with its own letters


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
    for task in FIXTURE_TASKS:
        train = write_jsonl(tmp_path / f"{task}_train.jsonl", synthetic_rows(task, per_label=24, seed=0))
        test = write_jsonl(tmp_path / f"{task}_test.jsonl", synthetic_rows(task, per_label=8, seed=1))
        files[task] = (train, test)
    return files


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path (to prove nothing changed)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# -- causal LMs ------------------------------------------------------------------------------------
def write_tiny_llama(directory: Path, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(directory)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         pad_token_id=0, eos_token_id=1, bos_token_id=1, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


DOMAIN_WORDS = {"alpha": "abcdef", "beta": "ghijkl", "gamma": "mnopqr"}


def domain_texts(domain: str, count: int, seed: int) -> list[str]:
    """Texts made of words over the domain's letters, with a repeated pattern a module can learn."""
    rng = random.Random(f"{domain}-{seed}")
    letters = DOMAIN_WORDS[domain]
    texts = []
    for _ in range(count):
        words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 5))) for _ in range(rng.randint(4, 9))]
        texts.append(" ".join(words) + " " + letters[:3] + ".")
    return texts


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    return str(write_tiny_llama(tmp_path_factory.mktemp("tiny-llama")))


# -- the CLI ---------------------------------------------------------------------------------------
def invoke(*args):
    """Run the CLI exactly as the console script does (`adapterbank_cli.main.run`: every error one line on
    stderr); returns (exit code, stdout) and leaves stderr in `invoke.stderr`. Only a bug escapes."""
    from click.testing import CliRunner

    from adapterbank_cli.main import run

    with CliRunner().isolation() as (stdout, stderr, _):
        code = run([str(a) for a in args])
    invoke.stderr = stderr.getvalue().decode("utf-8", "replace")
    return code, stdout.getvalue().decode("utf-8", "replace")


# -- small banks to copy ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def classifier_template(tmp_path_factory, tiny_base) -> Path:
    """A classification bank over the tiny BERT with tasks alpha (LoRA) and beta (prompt), briefly trained;
    tests copy it (`copy_bank`) before changing anything."""
    from adapterbank import AdapterBank

    folder = tmp_path_factory.mktemp("classifier-template")
    root = folder / "bank"
    bank = AdapterBank.create(root, base=tiny_base, device=DEVICE)
    for task, kind in (("alpha", "lora"), ("beta", "prompt")):
        bank.add_task(task, write_jsonl(folder / f"{task}.jsonl", synthetic_rows(task, per_label=12, seed=0)),
                      kind=kind, epochs=3, progress=False)
    return root


@pytest.fixture(scope="session")
def causal_template(tmp_path_factory, tiny_llama, tiny_base) -> Path:
    """A causal bank over the tiny Llama with clm modules alpha and beta on v0 (copy before changing)."""
    from adapterbank import AdapterBank

    root = tmp_path_factory.mktemp("causal-template") / "bank"
    bank = AdapterBank.create(root, base=tiny_llama, router_encoder=tiny_base, device=DEVICE)
    for domain in ("alpha", "beta"):
        bank.add_task(domain, domain_texts(domain, 80, seed=0), block_size=32, max_steps=6, lr=1e-2, progress=False)
    return root


def copy_bank(template: Path, destination: Path) -> Path:
    import shutil

    shutil.copytree(template, destination)
    return destination
