"""Routed generation against the bare base model's own `generate`: tokens/s on one batch whose rows use
different modules, greedy, every row forced to the same number of new tokens (`min_new_tokens`), the
routing of the prompts included in the routed time. Prints JSON.

continual_instruction.py calls `measure` on the bank it trained. Run alone, this script builds a bank of
four modules (sft LoRA, sft prompt tuning, another sft LoRA and a clm LoRA, a few steps each: speed does
not depend on what a module learned) and measures one batch mixing all four, and the same prompts on a
bank of LoRA modules only (the cost of the per-row soft prompts).

    python benchmarks/generation_speed.py                                  # SmolLM2-135M (packaged GGUF), CPU
    python benchmarks/generation_speed.py --device cuda --random-base DIR  # DIR: config + tokenizer; random weights
    python benchmarks/generation_speed.py --bank BANK --data TASKS_DIR     # a trained bank, on 4 tasks' test prompts
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from adapterbank.causal.chat import render_prompt  # noqa: E402
from adapterbank.causal.generation import VersionGenerator  # noqa: E402

NEW_TOKENS = 32
REPEATS = 3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(bank, conversations: list[list[dict]], batch_size: int, new_tokens: int = NEW_TOKENS,
            repeats: int = REPEATS) -> dict:
    """Tokens/s of routed generation (routing included) and of the bare base's `generate` on the same
    rendered prompts, medians of `repeats` interleaved runs after a warm-up of each."""
    users = [c[-1]["content"] for c in conversations]
    base = bank.base
    prompts = [render_prompt(base.tokenizer, c) for c in conversations]
    options = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    at = {info.name: (info.path, info.kind) for info in bank.tasks()}
    generator = VersionGenerator(base.model, base.tokenizer)
    device = next(base.model.parameters()).device

    def routed():
        modules = [r.tasks[0] if r.tasks else None for r in bank.route(users, ood_quantile=0)]
        generator.generate(prompts, modules, at, batch_size, options)
        return modules

    def bare():
        tokenizer = base.tokenizer
        side, tokenizer.padding_side = tokenizer.padding_side, "left"
        try:
            for start in range(0, len(prompts), batch_size):
                encoded = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True).to(device)
                with torch.no_grad():
                    base.model.generate(**encoded, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id, **options)
        finally:
            tokenizer.padding_side = side

    timings = {"routed": [], "base": []}
    modules = routed()  # warm-up: loads every module the batch uses
    bare()
    for _ in range(repeats):  # interleaved, so drift hits both alike
        for name, fn in (("base", bare), ("routed", routed)):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            timings[name].append(time.perf_counter() - t0)
    tokens = len(prompts) * new_tokens
    median = {k: sorted(v)[len(v) // 2] for k, v in timings.items()}
    return {"generate_tokens_per_s_routed": round(tokens / median["routed"], 1),
            "generate_tokens_per_s_base": round(tokens / median["base"], 1),
            "generate_ratio": round(median["base"] / median["routed"], 3),
            "generate_modules_in_batch": len({m for m in modules if m is not None}),
            "generate_base_rows": sum(m is None for m in modules), "generate_rows": len(prompts),
            "generate_new_tokens": new_tokens, "generate_batch_size": batch_size, "device": str(device)}


# Four kinds of request, each its own task: what the rows of the mixed batch ask.
def _sql(rng):
    table, column = rng.choice([("orders", "date"), ("customers", "city"), ("products", "price"), ("employees", "salary")])
    return f"Write a SQL query that lists the {column} of every row of {table} where the id is {rng.randint(1, 999)}.", \
        f"SELECT {column} FROM {table} WHERE id = {rng.randint(1, 999)};"


def _support(rng):
    item, problem = rng.choice([("parcel", "has not arrived"), ("card", "was declined"), ("password", "does not work"),
                                ("order", "arrived broken")])
    return f"Hello, my {item} {problem} since {rng.choice(['Monday', 'yesterday', 'last week'])}. What should I do?", \
        "I am sorry for the trouble. Our support team will look into it right away."


def _recipe(rng):
    verb, food = rng.choice([("bake", "bread"), ("boil", "eggs"), ("roast", "chicken"), ("simmer", "the tomato sauce")])
    return f"How long should I {verb} {food} for dinner tonight?", f"About {rng.randint(5, 60)} minutes."


def _science(rng):
    return (f"We propose a {rng.choice(['novel', 'simple', 'scalable'])} neural method for "
            f"{rng.choice(['image classification', 'speech recognition', 'graph learning'])} and evaluate it on "
            f"{rng.choice(['standard benchmarks', 'three datasets', 'ImageNet'])}, improving accuracy.")


def build_bank(root: Path, base: str, device: str, prompt_kind: str, steps: int, seed: int = 0):
    from adapterbank import AdapterBank

    rng = random.Random(seed)
    bank = AdapterBank.create(root, base=base, device=device)
    quiet = {"progress": False, "max_steps": steps}
    for name, make, kind in (("sql", _sql, "lora"), ("support", _support, prompt_kind), ("recipes", _recipe, "lora")):
        rows = [dict(zip(("prompt", "response"), make(rng))) for _ in range(40)]
        bank.add_task(name, rows, objective="sft", kind=kind, **quiet)
    bank.add_task("science", [_science(rng) for _ in range(60)], objective="clm", block_size=32, **quiet)
    return bank


def random_base(source: Path, out: Path, seed: int = 0) -> Path:
    """A model of `source`'s architecture (config.json) with random weights, and its tokenizer: for speed
    on a machine the real weights cannot reach (speed does not depend on their values)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source)).save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--random-base", type=Path, help="a folder with config.json and a tokenizer: random weights of that shape")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows-per-task", type=int, default=4, help="rows of each of the 4 tasks in the batch")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    parser.add_argument("--steps", type=int, default=3, help="training steps per module")
    parser.add_argument("--bank", type=Path, help="measure this bank instead (with --data)")
    parser.add_argument("--data", type=Path, help="instruction task folders: the first 4 tasks' first test prompts")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    if args.bank:
        from adapterbank import AdapterBank
        from adapterbank.evaluation.instruction_tasks import load_instruction_tasks

        tasks = load_instruction_tasks(args.data)[:4]
        conversations = [c for task in tasks for c in task.conversations()[:args.rows_per_task]]
        print(json.dumps({"bank": str(args.bank), **measure(AdapterBank.open(args.bank, device=args.device), conversations,
                                                            args.batch_size, args.new_tokens)}, indent=2))
        return
    work = Path(tempfile.mkdtemp(prefix="generation-speed-"))
    base = str(random_base(args.random_base, work / "base")) if args.random_base else args.base
    rng = random.Random(1)
    conversations = [[{"role": "user", "content": text}] for make in (_sql, _support, _recipe)
                     for text in (make(rng)[0] for _ in range(args.rows_per_task))]
    conversations += [[{"role": "user", "content": _science(rng)}] for _ in range(args.rows_per_task)]
    results = {}
    for label, prompt_kind in (("mixed_lora_and_prompt", "prompt"), ("lora_only", "lora")):
        bank = build_bank(work / label, base, args.device, prompt_kind, args.steps)
        results[label] = measure(bank, conversations, args.batch_size, args.new_tokens)
        del bank
    print(json.dumps({"base": args.base if not args.random_base else f"random weights, shape of {args.random_base}",
                      **results}, indent=2))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
