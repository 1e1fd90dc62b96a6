"""Routed generation on a causal-LM bank: each prompt runs with the module of its task, in mixed batches.

Rows of one batch may use different modules: PEFT's mixed-adapter inference (`adapter_names`) applies
each row's LoRA, `__base__` rows run the bare base, and a prompt-tuning module's soft prompt is put
before its own rows' tokens (rows.py), so one batched `generate` with the KV cache serves them all. A
module runs on the base version it was trained on (modules are pinned to their version: see README
"Base versions"), so prompts are grouped by base version first and each version keeps its own PEFT model.
"""

from __future__ import annotations

import copy
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from ..kinds import get_kind, quiet_peft
from ..core.encoding import pad_id_of

BASE_ROW = "__base__"  # PEFT's name for "no adapter" in a mixed batch


class VersionGenerator:
    """One base version wrapped by PEFT, with the modules used so far loaded: LoRA-like kinds as named
    PEFT adapters, prompt kinds as their soft-prompt tensors."""

    def __init__(self, base_model: torch.nn.Module, tokenizer):
        self.base_model = copy.deepcopy(base_model)  # PEFT injects its layers: the bank's base stays bare
        self.tokenizer = tokenizer
        self.peft_model = None
        self.adapters: set[str] = set()
        self.prefixes: dict[str, torch.Tensor] = {}

    def _ensure(self, name: str, directory: Path, kind_name: str) -> None:
        from peft import PeftModel

        if name in self.adapters or name in self.prefixes:
            return
        kind = get_kind(kind_name)
        if kind.batching == "prefix":
            weight = self.base_model.get_input_embeddings().weight
            self.prefixes[name] = kind.load_prefix(directory).to(weight.device, weight.dtype)
            return
        with quiet_peft():
            if self.peft_model is None:
                self.peft_model = PeftModel.from_pretrained(self.base_model, str(directory), adapter_name=name)
            else:
                self.peft_model.load_adapter(str(directory), adapter_name=name)
        self.peft_model.eval()
        self.adapters.add(name)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], modules: Sequence[str | None], modules_at: dict[str, tuple[Path, str]],
                 batch_size: int, options: dict, check: Callable[[str], None] | None = None,
                 progress: bool = False, on_text: Callable[[int, str], None] | None = None) -> list[str]:
        """The continuation of each prompt by its module (None: the base). `modules_at`: {name: (directory,
        kind)}; `on_text(row, piece)` receives each row's text as it is generated."""
        from tqdm.auto import tqdm

        from .rows import row_inputs

        for name in dict.fromkeys(m for m in modules if m is not None):
            if name not in self.adapters and name not in self.prefixes and check is not None:
                check(name)
            self._ensure(name, *modules_at[name])
        model = self.peft_model if self.peft_model is not None else self.base_model
        tokenizer = self.tokenizer
        side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation continues from the right edge
        pad = pad_id_of(tokenizer)
        device = next(model.parameters()).device
        outputs: list[str] = []
        try:
            for start in tqdm(range(0, len(prompts), batch_size), desc="generate", unit="batch", disable=not progress, leave=False):
                chunk = list(prompts[start : start + batch_size])
                rows = list(modules[start : start + batch_size])
                encoded = tokenizer(chunk, return_tensors="pt", padding=True).to(device)
                inputs = row_inputs(model, encoded["input_ids"], encoded["attention_mask"], [self.prefixes.get(m) for m in rows])
                inputs.pop("position_ids")  # generate derives positions from the mask
                extra = dict(options)
                if self.peft_model is not None:
                    extra["adapter_names"] = [m if m in self.adapters else BASE_ROW for m in rows]
                if on_text is not None:
                    extra["streamer"] = RowStreamer(tokenizer, len(chunk), lambda row, text, at=start: on_text(at + row, text))
                new_tokens = model.generate(**inputs, pad_token_id=pad, **extra)  # inputs_embeds: only new tokens come back
                outputs.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        finally:
            tokenizer.padding_side = side
        return outputs


class RowStreamer:
    """A transformers streamer for a whole batch: each row's new text goes to `on_text(row, piece)` as it
    is generated (transformers' own streamers take one row). Pieces are differences of the row's full
    decode, held back while it ends inside a multi-byte character, so they add up to the final text."""

    def __init__(self, tokenizer, rows: int, on_text: Callable[[int, str], None]):
        self.tokenizer, self.on_text = tokenizer, on_text
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.sent = [""] * rows
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate first passes the prompt (empty with inputs_embeds)
            self.prompt_seen = True
            return
        for row, token in enumerate(value.reshape(len(self.tokens), -1).tolist()):
            self.tokens[row].extend(token)
            self._flush(row, final=False)

    def end(self) -> None:
        for row in range(len(self.tokens)):
            self._flush(row, final=True)

    def _flush(self, row: int, final: bool) -> None:
        text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)
        if (final or not text.endswith("\ufffd")) and text.startswith(self.sent[row]) and len(text) > len(self.sent[row]):
            self.on_text(row, text[len(self.sent[row]):])
            self.sent[row] = text


@dataclass(frozen=True)
class Piece:
    """Text generated for prompt `index` (by `task`'s module; None: the base) since the last piece."""

    index: int
    text: str
    task: str | None

    def __str__(self) -> str:
        return self.text


STREAM_DONE = object()


def stream_pieces(run: Callable[[Callable[[int, str], None]], list[str]], tasks: Sequence[str | None]) -> Iterator[Piece]:
    """Run `run(on_text)` (the batched generation) on a worker thread and yield its pieces as they come;
    an error in generation is raised here, in the caller's loop. Leaving the loop early lets the
    generation finish in the background (transformers' generate cannot be interrupted)."""
    pieces: queue.Queue = queue.Queue()

    def work() -> None:
        try:
            run(lambda row, text: pieces.put(Piece(row, text, tasks[row])))
            pieces.put(STREAM_DONE)
        except BaseException as exc:  # handed to the consumer
            pieces.put(exc)

    threading.Thread(target=work, name="adapterbank-stream", daemon=True).start()
    while (item := pieces.get()) is not STREAM_DONE:
        if isinstance(item, BaseException):
            raise item
        yield item
