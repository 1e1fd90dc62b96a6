"""Causal language modelling on unlabelled domain text: blocks, one module's training, perplexity.

Documents are tokenized, joined with the end-of-sequence token and cut into blocks of `block_size`
tokens (the usual "group texts" recipe): long documents span several blocks, short ones share one.
Every data problem is reported before any training starts. The steps run on the one training loop
(core/loop.py).
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass
from typing import Sequence

import torch
from peft import get_peft_model

from ..core import loop
from ..core.encoding import collate
from ..errors import DataError
from ..kinds import get_kind, quiet_peft
from .config import CLMConfig

ROUTER_MIN_TOKENS = 8  # shortest window the router's domain statistics are estimated from
ROUTER_SAMPLE_BLOCKS = 2000  # blocks per domain the router's statistics are estimated from
MAX_HELD_OUT_BLOCKS = 32  # held-out blocks for the before/after perplexity when no --eval is given


def make_blocks(tokenizer, texts: Sequence[str], block_size: int, source: str) -> list[list[int]]:
    """Token blocks of `block_size` (the last one may be shorter) over the EOS-joined documents."""
    if not texts:
        raise DataError(f"{source}: empty corpus (no texts)")
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for number, ids in enumerate(tokenizer(list(texts), add_special_tokens=False)["input_ids"], start=1):
        if not ids:
            raise DataError(f"{source}: text #{number} is shorter than one token")
        stream.extend(ids)
        if eos is not None:
            stream.append(eos)
    blocks = [stream[i : i + block_size] for i in range(0, len(stream), block_size)]
    if len(blocks[-1]) < 2:  # a block must hold at least one prediction
        blocks.pop()
    if not blocks:
        raise DataError(f"{source}: fewer than 2 tokens in the whole corpus")
    return blocks


def split_held_out(blocks: list[list[int]], seed: int) -> tuple[list[list[int]], list[list[int]]]:
    """(train, held out): a seeded 5 % of the blocks (1 to MAX_HELD_OUT_BLOCKS) are kept out of training."""
    if len(blocks) < 2:
        raise DataError(f"the corpus fills only {len(blocks)} block; at least 2 are needed (one is held out "
                        "to measure perplexity): add text, lower --block-size or pass --eval")
    count = max(1, min(MAX_HELD_OUT_BLOCKS, round(0.05 * len(blocks))))
    held = set(random.Random(seed).sample(range(len(blocks)), count))
    return [b for i, b in enumerate(blocks) if i not in held], [b for i, b in enumerate(blocks) if i in held]


def _summed_nll(model, input_ids: torch.Tensor, mask: torch.Tensor, kind=None) -> tuple[torch.Tensor, int]:
    """Sum of next-token negative log-likelihoods over real tokens, and how many there were (`kind`: the
    module kind of a PEFT model, whose soft prompt, if any, goes before the tokens)."""
    from .rows import row_inputs, runner_of

    runner, prompt_of = runner_of(model, kind)
    length = input_ids.shape[1]
    logits = runner(**row_inputs(runner, input_ids, mask, prompt_of(len(input_ids)))).logits[:, -length:-1]
    targets = input_ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                                            ignore_index=-100, reduction="sum")
    return nll, int((targets != -100).sum())


@torch.no_grad()
def perplexity(model, blocks: Sequence[Sequence[int]], pad_id: int, batch_size: int = 8, kind=None) -> float:
    """exp(mean next-token negative log-likelihood) over every predicted token of `blocks`."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        nll, n = _summed_nll(model, *collate(blocks[start : start + batch_size], pad_id, device), kind)
        total, count = total + float(nll), count + n
    model.train(was_training)
    return math.exp(total / max(count, 1))


@dataclass
class TrainedLM:
    peft_model: torch.nn.Module
    hyperparameters: dict
    metrics: dict


def train_clm(base_model, blocks: list[list[int]], pad_id: int, config: CLMConfig, progress: bool = True,
              description: str = "training") -> TrainedLM:
    """Fit a module (LoRA: PEFT's default targets for the architecture) on next-token prediction.

    The base is deep-copied before PEFT wraps it, so the caller's base never changes."""
    kind = get_kind(config.kind)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    device = next(base_model.parameters()).device
    peft_config = kind.peft_config(base_model, config.params, causal=True)
    with quiet_peft():
        peft_model = get_peft_model(copy.deepcopy(base_model), peft_config)
    peft_config = peft_model.peft_config["default"]  # with the target modules PEFT resolved
    total = config.total_steps(len(blocks))

    def batches():  # shuffled passes over the blocks, as many as the steps need
        while True:
            order = list(range(len(blocks)))
            rng.shuffle(order)
            for start in range(0, len(order), config.batch_size):
                yield [blocks[i] for i in order[start : start + config.batch_size]]

    def step_loss(batch):
        input_ids, mask = collate(batch, pad_id, device)
        nll, count = _summed_nll(peft_model, input_ids, mask, kind)
        return nll / max(count, 1), int(mask.sum()), {}

    groups = [{"params": [p for p in peft_model.parameters() if p.requires_grad], "lr": config.resolved_lr(),
               "weight_decay": 0.0}]
    peft_model.train()
    run = loop.train(groups, batches(), step_loss, total,
                     hooks=[loop.ProgressBar(total, description, progress), loop.KillPoints()])
    peft_model.eval()
    tail = run.losses[-max(1, len(run.losses) // 10):]
    tokens = sum(run.sizes)
    hyper = {"kind": config.kind, "objective": config.objective, **kind.hyperparameters(peft_config),
             "block_size": config.block_size, "batch_size": config.batch_size, "lr": config.resolved_lr(),
             "epochs": config.epochs, "max_steps": config.max_steps, "steps": run.steps, "seed": config.seed}
    metrics = {"train_loss": round(sum(tail) / len(tail), 6) if tail else None, "train_steps": run.steps,
               "train_seconds": round(run.seconds, 3),
               "train_tokens": tokens, "train_tokens_per_s": round(tokens / max(run.seconds, 1e-9), 1)}
    return TrainedLM(peft_model, hyper, metrics)


def router_texts(tokenizer, blocks: Sequence[Sequence[int]], limit: int, seed: int,
                 min_tokens: int = ROUTER_MIN_TOKENS) -> list[str]:
    """What the router learns a domain from: decoded windows of up to `limit` blocks (a seeded sample),
    each of a random length between `min_tokens` and the block's. Prompts are usually much shorter than
    a block, and shorter texts score lower against a domain's mean: learning from whole blocks only
    would put most real prompts below the out-of-scope threshold."""
    rng = random.Random(seed)
    texts = []
    for i in sorted(rng.sample(range(len(blocks)), min(limit, len(blocks)))):
        block = blocks[i]
        length = rng.randint(min(min_tokens, len(block)), len(block))
        start = rng.randint(0, len(block) - length)
        text = tokenizer.decode(block[start : start + length], skip_special_tokens=True).strip()
        if text:
            texts.append(text)
    return texts or ["(empty)"]


UNMOVED_PERPLEXITY = 1e-3  # relative change in held-out perplexity below which training is reported as having done nothing


def warn_if_unhelpful(name: str, before: float, after: float, steps: int, reach: float, quantile: float, size: str,
                      measure: str = "held-out perplexity") -> None:
    """Say at add-task time what would otherwise surprise later: a module that did not learn, or a domain
    whose own held-out text the router would send to the base."""
    import warnings

    from ..errors import AdapterBankWarning

    if abs(before - after) <= UNMOVED_PERPLEXITY * before:
        warnings.warn(f"task {name!r}: {steps} training step(s) did not move {measure} ({before:.3f} -> "
                      f"{after:.3f}); train longer (--max-steps, --epochs) or with a higher --lr", AdapterBankWarning, stacklevel=4)
    if reach == 0:
        warnings.warn(f"task {name!r}: none of its own held-out text is in scope at the bank's out-of-scope threshold "
                      f"(ood_quantile {quantile}): with {size} the task is too small for the router "
                      "to recognise prompts, which would go to the base; add more data, or generate with "
                      "--ood-quantile 0 (or --task)", AdapterBankWarning, stacklevel=4)
