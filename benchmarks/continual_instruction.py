"""Continual instruction tuning on SmolLM2-135M-Instruct: the bank against its baselines, its routed
generation against the bare base, and its SFT add-task against TRL's SFTTrainer. Prints JSON.

Tasks (benchmarks/instruction_data.py, from ../shared/data): CLINC150 travel intents, Banking77 (20
intents) and TREC question types answered with the label name, and a free-form SciTLDR task (write an
abstract's opening sentence, ROUGE-L). Learned in that order by
`adapterbank eval --scenario instruction`'s protocol with the library defaults.

    python benchmarks/continual_instruction.py                  # the full run (under 45 minutes on 2 CPU cores)
    python benchmarks/continual_instruction.py --quick          # a smaller smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

from adapterbank.evaluation import instruction_protocol, report  # noqa: E402
from adapterbank.evaluation.instruction_tasks import load_instruction_tasks  # noqa: E402

SPEED_ROWS_PER_TASK = 4  # the mixed batch: 4 test prompts from each of the first 4 tasks


def generation_speed(bank, tasks, batch_size: int) -> dict:
    """Routed generation (routing included) on a batch mixing 4 modules against the bare base's `generate`
    on the same prompts (generation_speed.py)."""
    from generation_speed import measure

    return measure(bank, [c for task in tasks[:4] for c in task.conversations()[:SPEED_ROWS_PER_TASK]], batch_size)


def sft_speed(bank, task, epochs: int, batch_size: int, lr: float) -> dict:
    """Our SFT training loop and TRL's SFTTrainer on the same task, LoRA config, epochs, batch size and lr."""
    from trl_reference import trl_sft

    from adapterbank.causal.config import SFTConfig
    from adapterbank.causal.sft import response_loss, split_held_out, tokenize_examples, train_sft
    from adapterbank.core.encoding import pad_id_of
    from adapterbank.kinds import get_kind

    base = bank.base
    train, held = split_held_out(list(task.train), seed=0)
    config = SFTConfig(epochs=epochs, batch_size=batch_size, lr=lr)
    kind = get_kind(config.kind)
    peft_config = kind.peft_config(base.model, config.params, causal=True)
    context = int(base.model.config.max_position_embeddings)
    pad = pad_id_of(base.tokenizer)
    ours = train_sft(base.model, tokenize_examples(base.tokenizer, train, context), pad, config, progress=False)
    ours_loss = response_loss(ours.peft_model, tokenize_examples(base.tokenizer, held, context), pad, kind)
    lora = {"r": peft_config.r, "lora_alpha": peft_config.lora_alpha, "lora_dropout": peft_config.lora_dropout,
            "target_modules": sorted(ours.peft_model.peft_config["default"].target_modules), "task_type": "CAUSAL_LM"}

    def conversational(examples):
        return [{"prompt": list(e.context), "completion": [{"role": "assistant", "content": e.response}]} for e in examples]

    with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its metrics: keep stdout the JSON alone
        trl = trl_sft(base.model, base.tokenizer, conversational(train), conversational(held), lora, epochs, batch_size, lr)
    return {"sft_tokens_per_s": ours.metrics["train_tokens_per_s"], "trl_sft_tokens_per_s": round(trl["tokens_per_s"], 1),
            "sft_speedup_vs_trl": round(ours.metrics["train_tokens_per_s"] / trl["tokens_per_s"], 3),
            "sft_held_out_loss": round(ours_loss, 4), "trl_held_out_loss": round(trl["held_out_loss"], 4),
            "sft_loss_gap": round(ours_loss / trl["held_out_loss"] - 1, 4),
            "sft_speed_detail": {"task": task.name, "train_examples": len(train), "held_out_examples": len(held),
                                 "epochs": epochs, "batch_size": batch_size, "lr": lr, "lora": lora,
                                 "ours": {k: ours.metrics[k] for k in ("train_tokens", "train_seconds", "train_steps")},
                                 "trl": {k: v for k, v in trl.items() if k != "held_out_loss"}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="instruction task folders (default: built from ../shared/data)")
    parser.add_argument("--out", type=Path, help="where the eval report and bank go (default: a temp dir)")
    parser.add_argument("--train-per-task", type=int, default=200)
    parser.add_argument("--test-per-task", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="60 train / 10 test per task, for a smoke run")
    parser.add_argument("--batch-size", type=int, default=16, help="generation batch size")
    parser.add_argument("--speed-epochs", type=int, default=2,
                        help="epochs of the SFT speed comparison (ours and TRL's, same data, LoRA, batch size and lr)")
    parser.add_argument("--bank-only", action="store_true",
                        help="the bank's own matrix only: no baselines, no speed comparisons (a rerun after a router change)")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    work = Path(tempfile.mkdtemp(prefix="continual-instruction-"))
    out = args.out or work / "eval"
    data = args.data
    if data is None:
        from instruction_data import build

        data = work / "data"
        train, test = (60, 10) if args.quick else (args.train_per_task, args.test_per_task)
        build(data, train_per_task=train, test_per_task=test, seed=0)
    started = time.perf_counter()
    tasks = load_instruction_tasks(data)
    results = instruction_protocol.run(tasks, out, seed=0, device="cpu", progress=False, batch_size=args.batch_size,
                                       **({"baselines": ()} if args.bank_only else {}))
    report.write(results, out)
    bank_fields = {"routed_aa": results["average_accuracy"], "oracle_aa": results["oracle_accuracy"], "bwt": results["bwt"],
                   "fwt": results["fwt"], "forgetting": results["forgetting"], "routing_accuracy": results["routing_accuracy"],
                   "accuracy_matrix": results["accuracy_matrix"], "oracle_per_task": results["oracle_per_task"],
                   "tasks": results["task_names"], "task_metrics": results["task_metrics"], "config": results["config"],
                   "wall_s": results["wall_s"], "report": str(out / "report.md")}
    if args.bank_only:
        print(json.dumps({**bank_fields, "total_wall_s": round(time.perf_counter() - started, 1)}, indent=2))
        return
    from adapterbank import AdapterBank

    bank = AdapterBank.open(out / "bank", device="cpu")
    speed = generation_speed(bank, tasks, args.batch_size)
    speed_task = tasks[min(1, len(tasks) - 1)]  # Banking77 in the default tasks
    sft = bank.task(speed_task.name).record  # the library's batch size and lr for the speed comparison
    training = sft_speed(bank, speed_task, epochs=args.speed_epochs, batch_size=sft["hyperparameters"]["batch_size"],
                         lr=sft["hyperparameters"]["lr"])
    baselines = results["baselines"]
    print(json.dumps({
        **bank_fields, "joint_aa": baselines["joint"]["average_accuracy"], "seqlora_aa": baselines["seqlora"]["average_accuracy"],
        "seqlora_bwt": baselines["seqlora"]["bwt"], "base_aa": baselines["base"]["average_accuracy"], **speed, **training,
        "seqlora_matrix": baselines["seqlora"]["accuracy_matrix"], "joint_per_task": baselines["joint"]["per_task_accuracy"],
        "base_per_task": baselines["base"]["per_task_accuracy"], "total_wall_s": round(time.perf_counter() - started, 1),
    }, indent=2))

if __name__ == "__main__":
    main()
