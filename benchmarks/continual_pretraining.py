"""Continual pre-training on SmolLM2-135M: domain modules, merges into versioned bases, export. Prints JSON.

Domains, in order: scitldr_abstracts, federalist_papers, tinyshakespeare (../shared/data). One LoRA
module per domain is trained on base v0 with `add-task --objective clm`. Then, for each merge method,
starting again from v0, the modules are merged into the base in turn (v0 -> +science -> +federalist
-> +shakespeare; the second and third are re-targeted: trained on v0, merged onto a later version).
Perplexity on each domain's test text is measured for the base, each module on its own base, and
every merged base: the rows of the merged-base matrix show whether merging domain 3 undoes domain 1.

Then each method also merges all three modules at once into v0 (linear with weights 1/3, TIES with
weights 1: its disjoint mean), the alternative to merging in turn.

Budget choices (2 CPU cores, whole run under 30 minutes): blocks of 128 tokens, 60 optimizer steps of
4 blocks per module (about 30k training tokens per domain), 24 test blocks per domain (about 3k tokens).

    python benchmarks/continual_pretraining.py [--steps 60] [--methods linear,ties] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DOMAINS = [("science", "scitldr_abstracts"), ("federalist", "federalist_papers"), ("shakespeare", "tinyshakespeare")]


def read_texts(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def prompt_texts(texts: list[str], count: int = 60) -> list[str]:
    """Prompt-like pieces of test text: up to `count` runs of 8 to 40 words (seeded), from every document."""
    import random

    rng = random.Random(0)
    words = [t.split() for t in texts if len(t.split()) >= 8]
    pieces = []
    while len(pieces) < count:
        doc = words[len(pieces) % len(words)]
        length = rng.randint(8, min(40, len(doc)))
        start = rng.randint(0, len(doc) - length)
        pieces.append(" ".join(doc[start : start + length]))
    return pieces


def test_blocks(tokenizer, texts: list[str], block_size: int, count: int) -> list[list[int]]:
    """`count` evenly spaced full blocks of the domain's test text."""
    from adapterbank.causal.training import make_blocks

    blocks = [b for b in make_blocks(tokenizer, texts, block_size, "test") if len(b) == block_size]
    step = max(1, len(blocks) // count)
    return blocks[::step][:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per domain module")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--test-blocks", type=int, default=24)
    parser.add_argument("--methods", default="linear,ties")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    for _, folder in DOMAINS:
        if not (args.data / folder / "train.jsonl").is_file():
            sys.exit(f"missing {args.data / folder}/train.jsonl (see ../shared/data/README.md)")

    import torch

    from adapterbank import AdapterBank
    from adapterbank.kinds import merged_model
    from adapterbank.causal.training import perplexity

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="cpt-bench-"))
    t0 = time.perf_counter()
    bank = AdapterBank.create(work / "bank", base="smollm2-135m", device="cpu")
    init_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    reopened = AdapterBank.open(work / "bank", device="cpu")
    reopen_seconds = time.perf_counter() - t0
    del reopened
    tokenizer = bank.base.tokenizer
    pad = tokenizer.pad_token_id
    tests = {name: test_blocks(tokenizer, read_texts(args.data / folder / "test.jsonl"), args.block_size, args.test_blocks)
             for name, folder in DOMAINS}

    def row(model) -> dict:
        return {name: round(perplexity(model, blocks, pad), 3) for name, blocks in tests.items()}

    result = {"model": bank.base_id, "domains": [f for _, f in DOMAINS], "block_size": args.block_size,
              "steps_per_module": args.steps, "batch_size": args.batch_size, "test_blocks_per_domain": args.test_blocks,
              "test_tokens_per_domain": {n: sum(len(b) - 1 for b in bl) for n, bl in tests.items()},
              "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "python": platform.python_version(), "torch": torch.__version__},
              "init_seconds": round(init_seconds, 1), "reopen_seconds": round(reopen_seconds, 2)}
    print(f"init {init_seconds:.1f} s, reopen {reopen_seconds:.2f} s", file=sys.stderr)
    result["perplexity_base"] = row(bank.base.model)
    print("base", result["perplexity_base"], file=sys.stderr)

    modules, training = {}, {}
    for name, folder in DOMAINS:
        info = bank.add_task(name, args.data / folder / "train.jsonl", objective="clm", block_size=args.block_size,
                             max_steps=args.steps, batch_size=args.batch_size, progress=False)
        m = info.record["metrics"]
        training[name] = {k: m[k] for k in ("train_tokens", "train_tokens_per_s", "train_seconds", "perplexity_before",
                                            "perplexity_after", "held_out_tokens", "add_task_seconds")}
        modules[name] = row(merged_model(bank.base.model, info.path))
        print(name, training[name], modules[name], file=sys.stderr)
    result["training"] = training
    result["train_tokens_per_s_mean"] = round(sum(t["train_tokens_per_s"] for t in training.values()) / len(training), 1)
    result["perplexity_module_on_v0"] = modules

    prompts = {name: prompt_texts(read_texts(args.data / folder / "test.jsonl")) for name, folder in DOMAINS}
    routed = {name: [r.tasks[0] if r.in_scope else None for r in bank.route(texts)] for name, texts in prompts.items()}
    top1 = {name: [r.tasks[0] for r in bank.route(texts, ood_quantile=0)] for name, texts in prompts.items()}
    result["routing"] = {name: {"prompts": len(r), "to_own_module": round(sum(x == name for x in r) / len(r), 3),
                                "to_base": round(sum(x is None for x in r) / len(r), 3),
                                "closest_is_own_domain": round(sum(x == name for x in top1[name]) / len(r), 3)}
                         for name, r in routed.items()}
    clinc = args.data / "clinc150" / "test.jsonl"
    if clinc.is_file():  # short requests from no domain of the bank: they should go to the base
        off = [r.tasks[0] if r.in_scope else None for r in bank.route(read_texts(clinc)[:60])]
        result["routing"]["clinc150_out_of_domain"] = {"prompts": len(off), "to_base": round(off.count(None) / len(off), 3)}
    t0 = time.perf_counter()
    sample = bank.generate([prompts[name][0] for name, _ in DOMAINS], max_new_tokens=24)
    result["generate_3_prompts_24_tokens_seconds"] = round(time.perf_counter() - t0, 2)
    result["generation_sample"] = [g.to_dict() for g in sample]

    result["merges"] = {}
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        bank.rollback("v0")
        rows, versions, merge_seconds = [], [], []
        for name, _ in DOMAINS:
            t0 = time.perf_counter()
            record = bank.merge([name], method=method, retarget=True)
            merge_seconds.append(round(time.perf_counter() - t0, 1))
            versions.append(record["version"])
            rows.append({"after_merging": name, "version": record["version"], "perplexity": row(bank.base.model)})
            print(method, rows[-1], file=sys.stderr)
        result["merges"][method] = {"rows": rows, "merge_seconds": merge_seconds}
        # all three modules in one merge from v0: TIES resolves sign conflicts between them, linear averages them
        bank.rollback("v0")
        weights = [1.0] * len(DOMAINS) if "ties" in method else [1.0 / len(DOMAINS)] * len(DOMAINS)
        record = bank.merge([name for name, _ in DOMAINS], method=method, weights=weights)
        result["merges"][method]["all_at_once"] = {"version": record["version"], "weights": [round(w, 4) for w in weights],
                                                   "perplexity": row(bank.base.model)}
        print(method, "all at once", result["merges"][method]["all_at_once"], file=sys.stderr)
        # the pinning policy's alternative: each module re-targeted onto the base it is merged into, on its own domain
        result["merges"][method]["own_domain_pinned_vs_merged"] = {
            r["after_merging"]: {"module_on_v0": modules[r["after_merging"]][r["after_merging"]],
                                 "merged_base": r["perplexity"][r["after_merging"]],
                                 "final_base": rows[-1]["perplexity"][r["after_merging"]]} for r in rows}

    t0 = time.perf_counter()
    out = bank.export(work / "export", task=DOMAINS[-1][0])
    result["export_seconds"] = round(time.perf_counter() - t0, 1)
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(out)
    blocks = torch.tensor(tests[DOMAINS[-1][0]][:2])
    with torch.no_grad():
        from peft import PeftModel

        import copy
        unmerged = PeftModel.from_pretrained(copy.deepcopy(bank.base_at("v0").model), str(bank.task(DOMAINS[-1][0]).path))
        diff = (exported(input_ids=blocks).logits - unmerged(input_ids=blocks).logits).abs().max().item()
    result["export_max_abs_logit_diff"] = diff
    result["base_version_bytes"] = sum(p.stat().st_size for p in (work / "bank" / "bases" / "v0").iterdir())
    result["module_bytes"] = {name: bank.task(name).size_bytes for name, _ in DOMAINS}
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    shutil.rmtree(work, ignore_errors=True)  # about 0.5 GB per base version
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
