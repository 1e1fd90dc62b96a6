"""Instruction tuning (`--objective sft`): prompt/response or chat examples in, a module trained on the responses.

Data: JSON Lines, one example a line, either `{"prompt": ..., "response": ...}` or `{"messages": [...]}`
in OpenAI's chat schema. The target is the conversation's **last assistant turn**; the turns before it
(earlier assistant turns included) are context, turns after it are ignored. Every example is rendered
with the chat renderer generation uses (chat.py), so a module is served the layout it learned.

Speed: examples are tokenized once; batches are drawn from length buckets (a shuffled window of 32
batches sorted by length), left-padded so every response ends at the right edge; the prefix the rows
share (system prompt, template, the task's instruction) runs once per batch, not once per row; and the
LM head computes logits for the response window only (`logits_to_keep`), not for the whole prompt.
"""

from __future__ import annotations

import copy
import os
import random
from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import DataError
from .chat import check_messages, render_completion, single_turn, user_text
from .config import SFTConfig

BUCKET_BATCHES = 32  # batches per length-sorted window: enough to group lengths, small enough to stay shuffled
SHARED_PREFIX_MIN = 8  # shorter common prefixes are not worth a separate pass
MAX_HELD_OUT = 32  # held-out examples for the before/after response loss when no --eval is given


@dataclass(frozen=True)
class Example:
    context: tuple  # the messages before the target turn
    response: str
    where: str  # "file:line" or "example #n", for errors

    @property
    def route_text(self) -> str:
        return user_text(self.context)


def parse_example(record: object, where: str) -> Example:
    """One example from a JSON object; DataError naming `where` for every way it can be wrong."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object with 'prompt' and 'response', or 'messages'")
    if "messages" in record:
        if "prompt" in record or "response" in record:
            raise DataError(f"{where}: give 'prompt'/'response' or 'messages', not both")
        messages = check_messages(record["messages"], where)
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if not turns:
            raise DataError(f"{where}: the conversation has no assistant turn (its last one is the training target)")
        context, response = messages[: turns[-1]], messages[turns[-1]]["content"]
        if not user_text(context).strip():
            raise DataError(f"{where}: no user message before the last assistant turn")
    elif "prompt" in record or "response" in record:
        for key in ("prompt", "response"):
            if key not in record:
                raise DataError(f"{where}: missing field '{key}'")
            if not isinstance(record[key], str):
                raise DataError(f"{where}: field '{key}' must be a string, got {type(record[key]).__name__}")
        if not record["prompt"].strip():
            raise DataError(f"{where}: empty prompt")
        context, response = single_turn(record["prompt"]), record["response"]
    else:
        raise DataError(f"{where}: expected 'prompt' and 'response', or 'messages' (OpenAI chat format)")
    if not response.strip():
        raise DataError(f"{where}: empty response")
    return Example(tuple(context), response, where)


def load_examples(data: "str | os.PathLike | Sequence[dict]") -> tuple[list[Example], str]:
    """(examples, source) from a .jsonl file or a list of example objects."""
    from ..data import read_objects

    if isinstance(data, (str, os.PathLike)):
        return [parse_example(record, f"{data}:{number}") for number, record in read_objects(data)], str(data)
    if isinstance(data, (list, tuple)):
        if not data:
            raise DataError("<memory>: no examples")
        return [parse_example(record, f"example #{i + 1}") for i, record in enumerate(data)], "<memory>"
    raise DataError(f"expected a .jsonl path or a list of example objects, got {type(data).__name__}")


@dataclass(frozen=True)
class Tokenized:
    ids: list[int]  # prompt then response
    response_len: int  # the trailing tokens the loss is on


def tokenize_examples(tokenizer, examples: Sequence[Example], context: int) -> list[Tokenized]:
    """Token ids of each rendered example (the prompt tokenized as generation tokenizes it); an example
    longer than `context` (the model's positions, less a soft prompt's) is a DataError naming it."""
    rendered = [render_completion(tokenizer, list(e.context), e.response) for e in examples]
    prompts = tokenizer([p for p, _ in rendered])["input_ids"]
    responses = tokenizer([r for _, r in rendered], add_special_tokens=False)["input_ids"]
    out = []
    for example, prompt, response in zip(examples, prompts, responses):
        if len(prompt) + len(response) > context:
            raise DataError(f"{example.where}: {len(prompt) + len(response)} tokens, longer than the model's context "
                            f"({context} tokens): shorten the prompt")
        out.append(Tokenized(prompt + response, len(response)))
    return out


def split_held_out(examples: list, seed: int) -> tuple[list, list]:
    """(train, held out): a seeded 5 % (1 to MAX_HELD_OUT) kept out to measure the response loss."""
    if len(examples) < 2:
        raise DataError(f"{len(examples)} example: at least 2 are needed (one is held out to measure the loss); "
                        "add examples or pass --eval")
    count = max(1, min(MAX_HELD_OUT, round(0.05 * len(examples))))
    held = set(random.Random(seed).sample(range(len(examples)), count))
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


def shared_prefix(batch: Sequence[Tokenized]) -> int:
    """Leading tokens every row of the batch has in common (system prompt, template, a task's instruction),
    stopping before each row's last prompt token (whose logits predict the response's first token)."""
    if len(batch) < 2:
        return 0
    first, limit = batch[0].ids, min(len(t.ids) - t.response_len - 1 for t in batch)
    length = 0
    while length < limit and all(t.ids[length] == first[length] for t in batch):
        length += 1
    return length


def response_nll(model, batch: Sequence[Tokenized], pad_id: int, kind=None) -> tuple[torch.Tensor, int]:
    """Summed negative log-likelihood of the batch's response tokens, and how many there were.

    A prefix the rows share (SHARED_PREFIX_MIN tokens or more) runs once, for one row; its keys and values
    are repeated for the batch, which then runs only its own tokens. The result is the same (gradients
    flow back through the repeat), the cost of the shared part is paid once instead of per row."""
    from .rows import left_pad, row_inputs, runner_of

    runner, prompt_of = runner_of(model, kind)
    device = next(model.parameters()).device
    window = max(t.response_len for t in batch)
    prefix = shared_prefix(batch) if kind is None or kind.batching != "prefix" else 0
    if prefix >= SHARED_PREFIX_MIN:
        cache = runner(input_ids=torch.tensor([batch[0].ids[:prefix]], device=device), use_cache=True).past_key_values
        cache.batch_repeat_interleave(len(batch))
        input_ids, mask = left_pad([t.ids[prefix:] for t in batch], pad_id, device)
        full_mask = torch.cat([mask.new_ones(len(batch), prefix), mask], dim=1)
        positions = (full_mask.cumsum(-1) - 1)[:, prefix:]
        logits = runner(input_ids=input_ids, attention_mask=full_mask, position_ids=positions, past_key_values=cache,
                        use_cache=True, logits_to_keep=window + 1).logits[:, :-1]
    else:
        input_ids, mask = left_pad([t.ids for t in batch], pad_id, device)
        logits = runner(**row_inputs(runner, input_ids, mask, prompt_of(len(batch))), logits_to_keep=window + 1).logits[:, :-1]
    lengths = torch.tensor([t.response_len for t in batch], device=device)
    targets = input_ids[:, -window:].masked_fill(torch.arange(window, device=device)[None] < (window - lengths)[:, None], -100)
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                                            ignore_index=-100, reduction="sum")
    return nll, int(lengths.sum())


@torch.no_grad()
def response_loss(model, examples: Sequence[Tokenized], pad_id: int, kind=None, batch_size: int = 8) -> float:
    """Mean cross-entropy per response token (what the held-out metrics and the benchmark compare)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
    for start in range(0, len(order), batch_size):
        nll, n = response_nll(model, [examples[i] for i in order[start : start + batch_size]], pad_id, kind)
        total, count = total + float(nll), count + n
    model.train(was_training)
    return total / max(count, 1)


def bucketed_batches(lengths: Sequence[int], batch_size: int, rng: random.Random):
    """Endless shuffled passes; within a window of BUCKET_BATCHES batches, rows of similar length share a batch."""
    window = batch_size * BUCKET_BATCHES
    while True:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        batches = []
        for start in range(0, len(order), window):
            part = sorted(order[start : start + window], key=lengths.__getitem__)
            batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
        rng.shuffle(batches)
        yield from batches


def train_sft(base_model, examples: list[Tokenized], pad_id: int, config: SFTConfig, progress: bool = True,
              description: str = "training", peft_model=None):
    """Fit a module on the response tokens. The base is deep-copied before PEFT wraps it (the caller's
    stays bare); `peft_model`: keep training that one instead (the seqlora baseline)."""
    from peft import get_peft_model

    from ..core import loop
    from ..kinds import get_kind, quiet_peft
    from .training import TrainedLM

    kind = get_kind(config.kind)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    if peft_model is None:
        with quiet_peft():
            peft_model = get_peft_model(copy.deepcopy(base_model), kind.peft_config(base_model, config.params, causal=True))
    peft_config = peft_model.peft_config["default"]
    total = config.total_steps(len(examples))
    batches = (([examples[i] for i in batch]) for batch in bucketed_batches([len(e.ids) for e in examples],
                                                                              config.batch_size, rng))

    def step_loss(batch):
        nll, count = response_nll(peft_model, batch, pad_id, kind)
        return nll / max(count, 1), sum(len(t.ids) for t in batch), {}

    groups = [{"params": [p for p in peft_model.parameters() if p.requires_grad], "lr": config.resolved_lr(),
               "weight_decay": 0.0}]
    peft_model.train()
    run = loop.train(groups, batches, step_loss, total, hooks=[loop.ProgressBar(total, description, progress), loop.KillPoints()])
    peft_model.eval()
    tail = run.losses[-max(1, len(run.losses) // 10):]
    tokens = sum(run.sizes)
    hyper = {"kind": config.kind, "objective": config.objective, **kind.hyperparameters(peft_config),
             "batch_size": config.batch_size, "lr": config.resolved_lr(), "epochs": config.resolved_epochs(len(examples)),
             "max_steps": config.max_steps, "steps": run.steps, "seed": config.seed}
    metrics = {"train_loss": round(sum(tail) / len(tail), 6) if tail else None, "train_steps": run.steps,
               "train_seconds": round(run.seconds, 3), "train_tokens": tokens,
               "train_tokens_per_s": round(tokens / max(run.seconds, 1e-9), 1)}
    return TrainedLM(peft_model, hyper, metrics)
