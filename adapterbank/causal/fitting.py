"""What `add-task` does per objective on a causal bank: read the data, train, measure, learn the router's view.

A registry (FITTERS, objective -> function): the bank's `add_task` picks the fitter by the config's
objective and does the rest (the task record, staging, the router index) once for all objectives. Every
fitter reads and checks its data before it loads a model, so bad input costs nothing and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .. import faults


@dataclass
class Fitted:
    trained: Any  # training.TrainedLM
    stats: Any  # the router's statistics of the task
    metrics: dict
    data: dict


def fit_domain(bank, name: str, train, eval, config, progress: bool) -> Fitted:  # noqa: A002 - the CLI's --eval
    """`clm`: next-token prediction on unlabelled text cut into blocks; held-out perplexity before and after."""
    from ..data import as_corpus, fingerprint_records

    texts, source = as_corpus(train)
    eval_texts, eval_source = as_corpus(eval) if eval is not None else (None, None)
    from ..core.encoding import pad_id_of
    from ..kinds import get_kind
    from .training import (ROUTER_SAMPLE_BLOCKS, make_blocks, perplexity, router_texts, split_held_out, train_clm,
                           warn_if_unhelpful)

    base = bank.base_at(bank.current_base_version)
    blocks = make_blocks(base.tokenizer, texts, config.block_size, source)
    if eval_texts is not None:
        held_out = make_blocks(base.tokenizer, eval_texts, config.block_size, eval_source)
    else:
        blocks, held_out = split_held_out(blocks, config.seed)
    stats, reach = _router_view(bank, router_texts(base.tokenizer, blocks, ROUTER_SAMPLE_BLOCKS, config.seed),
                                lambda: router_texts(base.tokenizer, held_out, ROUTER_SAMPLE_BLOCKS, config.seed + 1))
    pad = pad_id_of(base.tokenizer)
    before = perplexity(base.model, held_out, pad)
    trained = train_clm(base.model, blocks, pad, config, progress=progress, description=f"add-task {name}")
    after = perplexity(trained.peft_model, held_out, pad, kind=get_kind(config.kind))
    faults.point("trained")
    warn_if_unhelpful(name, before, after, trained.metrics["train_steps"], reach, bank._router_settings(None, None)[1],
                      f"{len(blocks)} training block(s)")
    metrics = {"perplexity_before": round(before, 4), "perplexity_after": round(after, 4), "held_out_blocks": len(held_out),
               "held_out_tokens": sum(len(b) - 1 for b in held_out), "held_out_in_scope": round(reach, 4),
               "held_out_source": eval_source or "5% of the training blocks"}
    data = {"train_fingerprint": fingerprint_records(texts), "train_texts": len(texts), "train_blocks": len(blocks),
            "train_source": source}
    return Fitted(trained, stats, metrics, data)


def fit_instructions(bank, name: str, train, eval, config, progress: bool) -> Fitted:  # noqa: A002
    """`sft`: responses learned from prompts or conversations; the router learns the user turns; held-out
    response loss before and after."""
    from ..data import fingerprint_records
    from .sft import load_examples

    examples, source = load_examples(train)
    eval_examples, eval_source = load_examples(eval) if eval is not None else (None, None)
    from ..core.encoding import pad_id_of
    from ..kinds import get_kind
    from .sft import response_loss, split_held_out, tokenize_examples, train_sft
    from .training import warn_if_unhelpful

    base = bank.base_at(bank.current_base_version)
    kind = get_kind(config.kind)
    context = int(getattr(base.model.config, "max_position_embeddings", 2048)) - kind.reserved_positions(config.params)
    tokens = tokenize_examples(base.tokenizer, examples, context)  # every example checked before any training
    held_tokens = tokenize_examples(base.tokenizer, eval_examples, context) if eval_examples is not None else None
    if held_tokens is None:
        train_idx, held_idx = split_held_out(list(range(len(examples))), config.seed)
        train_examples, held_examples = [examples[i] for i in train_idx], [examples[i] for i in held_idx]
        tokens, held_tokens = [tokens[i] for i in train_idx], [tokens[i] for i in held_idx]
    else:
        train_examples, held_examples = examples, eval_examples
    stats, reach = _router_view(bank, [e.route_text for e in train_examples], lambda: [e.route_text for e in held_examples])
    pad = pad_id_of(base.tokenizer)
    before = response_loss(base.model, held_tokens, pad)
    trained = train_sft(base.model, tokens, pad, config, progress=progress, description=f"add-task {name}")
    after = response_loss(trained.peft_model, held_tokens, pad, kind)
    faults.point("trained")
    warn_if_unhelpful(name, before, after, trained.metrics["train_steps"], reach, bank._router_settings(None, None)[1],
                      f"{len(train_examples)} training example(s)", measure="held-out response loss")
    metrics = {"response_loss_before": round(before, 4), "response_loss_after": round(after, 4),
               "held_out_examples": len(held_tokens), "held_out_in_scope": round(reach, 4),
               "held_out_source": eval_source or "5% of the training examples"}
    data = {"train_fingerprint": fingerprint_records([(list(e.context), e.response) for e in train_examples]),
            "train_examples": len(train_examples), "train_source": source}
    return Fitted(trained, stats, metrics, data)


def _router_view(bank, texts: list[str], held_out_texts: Callable[[], list[str]]):
    """The task's router statistics from `texts`, and the share of its held-out texts they take in scope."""
    from ..routing.index import in_scope_share
    from ..routing.statistics import class_statistics

    features = bank._router_features(texts, {})
    stats = class_statistics(features, [0] * len(features), 1, held_out_scope=False)
    faults.point("lower-pass")
    return stats, in_scope_share(stats, bank._router_features(held_out_texts(), {}), bank._router_settings(None, None)[1])


FITTERS: dict[str, Callable[..., Fitted]] = {"clm": fit_domain, "sft": fit_instructions}
