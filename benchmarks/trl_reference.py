"""TRL's `SFTTrainer` as the reference point for our own SFT training speed.

Practitioners fine-tune a causal LM with a LoRA adapter through TRL, so "how fast is adding a task with adapterbank"
only means something next to "how fast is the same job in TRL". `trl_sft` runs that job (same model, data, LoRA
config, epochs, batch size and learning rate) and reports trained tokens per second and the held-out completion loss,
which is what our SFT add-task speed is compared against. TRL is a benchmark extra (`pip install trl`), not a
dependency of the `adapterbank` package, so it is imported inside the function.

TRL 1.16 defaults this relies on or overrides (checked in trl/trainer/sft_config.py, base_config.py, sft_trainer.py):
- prompt-completion data with `completion_only_loss=None` -> loss on the completion tokens only (the labels of the
  prompt, the chat-template header of the assistant turn included, are -100); `assistant_only_loss=False`.
- `packing=False`, `padding_free=False` (kept), `max_length=1024` (kept; longer sequences are truncated).
- `gradient_checkpointing=True` (TRL overrides transformers' False): set to False here, through its transformers 5
  name `activation_checkpointing`, because our trainer does not checkpoint.
- `bf16=True` when unset: set to False (fp32 on CPU, like ours). `optim`, scheduler and warmup are left at
  TRL/transformers defaults (adamw_torch_fused, linear decay, no warmup).
"""
from __future__ import annotations

import copy
import shutil
import tempfile
import time


def trl_sft(model, tokenizer, train: list[dict], held_out: list[dict], lora: dict, epochs: int, batch_size: int,
            lr: float, seed: int = 0) -> dict:
    """Train a LoRA adapter on `train` with TRL's SFTTrainer; return tokens, seconds, tokens/s and held-out loss.

    `train` / `held_out` are conversational prompt-completion examples ({"prompt": [user msg], "completion":
    [assistant msg]}). `model` and `tokenizer` are deep-copied: TRL patches the model's forward, PEFT injects layers
    and TRL sets the tokenizer's pad token, and none of that may leak to the caller."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = copy.deepcopy(model), copy.deepcopy(tokenizer)
    output_dir = tempfile.mkdtemp(prefix="trl_reference_")
    try:
        config = SFTConfig(
            output_dir=output_dir, num_train_epochs=epochs, per_device_train_batch_size=batch_size,
            per_device_eval_batch_size=batch_size, learning_rate=lr, seed=seed, use_cpu=True, bf16=False, fp16=False,
            activation_checkpointing=False,  # TRL defaults gradient_checkpointing to True; ours does not checkpoint
            report_to=[], save_strategy="no", logging_steps=10**9, dataloader_num_workers=0, disable_tqdm=True)
        trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(train),
                             eval_dataset=Dataset.from_list(held_out), processing_class=tokenizer,
                             peft_config=LoraConfig(**lora))
        # The prepared datasets are unpadded rows (no packing): their lengths are the non-padding tokens fed in.
        tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"]) * epochs
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        held_out_loss = _completion_loss(trainer)
        settings = {
            "trl_completion_only_loss": trainer.completion_only_loss, "padding_free": trainer.padding_free,
            "packing": config.packing, "max_length": config.max_length,
            "assistant_only_loss": config.assistant_only_loss,
            "gradient_checkpointing": config.gradient_checkpointing,
            "gradient_checkpointing_note": "TRL default True, set False explicitly (activation_checkpointing=False)",
            "bf16": config.bf16, "optim": str(config.optim.value),
            "lr_scheduler_type": str(config.lr_scheduler_type.value),
            "warmup_steps": config.warmup_steps, "weight_decay": config.weight_decay,
            "max_grad_norm": config.max_grad_norm, "loss_type": config.loss_type, "epochs": epochs,
            "batch_size": batch_size, "lr": lr, "seed": seed, "lora": dict(lora), "train_examples": len(train),
            "train_examples_after_prep": len(trainer.train_dataset), "held_out_examples": len(held_out),
            "trl_counted_tokens": trainer._total_train_tokens,  # TRL's own attention_mask count, a cross-check
            "torch_threads": torch.get_num_threads(),
        }
        return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
                "held_out_loss": held_out_loss, "steps": trainer.state.global_step, "settings": settings}
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)


def _completion_loss(trainer) -> float:
    """Mean cross-entropy over all completion tokens of the eval set TRL prepared (same chat template, same
    completion mask). Not `trainer.evaluate()`: its eval_loss averages per-batch means, weighting batches by
    sequences, not by completion tokens."""
    import torch
    import torch.nn.functional as F

    model = trainer.model
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in trainer.get_eval_dataloader():
            labels = batch.pop("labels")
            logits = model(**batch, use_cache=False).logits[:, :-1].float()  # plain forward: fused head is opt-in
            targets = labels[:, 1:]
            total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                     ignore_index=-100, reduction="sum").item()
            count += int((targets != -100).sum())
    return total / count
