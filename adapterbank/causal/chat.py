"""The chat format: OpenAI-style messages checked, and rendered with the tokenizer's chat template.

One renderer serves training (`--objective sft`) and generation (`chat`, and prompts routed to an sft
module), so a module always sees at inference exactly the text layout it was trained on. Without a
chat template (tiny test models, some bases) the fallback is plain `role: content` lines ending with
`assistant:`.
"""

from __future__ import annotations

from typing import Sequence

from ..errors import DataError

CHAT_ROLES = ("system", "user", "assistant")


def check_messages(messages: object, where: str) -> list[dict]:
    """The conversation as clean `{"role", "content"}` dicts; DataError naming `where` and the message."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise DataError(f"{where}: expected a non-empty list of messages")
    clean = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES or not isinstance(message.get("content"), str):
            raise DataError(f"{where}, message #{i + 1}: expected {{'role': {'|'.join(CHAT_ROLES)}, 'content': string}}")
        clean.append({"role": message["role"], "content": message["content"]})
    if not any(m["content"].strip() for m in clean if m["role"] == "user"):
        raise DataError(f"{where}: no user message with content")
    return clean


def user_text(messages: Sequence[dict]) -> str:
    """What routing reads of a conversation: its user turns (the template and system prompt say nothing
    about the task)."""
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


def render_prompt(tokenizer, messages: Sequence[dict]) -> str:
    """The text a model continues to write the assistant's next turn."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def render_completion(tokenizer, messages: Sequence[dict], response: str) -> tuple[str, str]:
    """(prompt, completion) for training: the completion is what the template writes for the assistant's
    turn `response` after `messages`, its end-of-turn marker included (so the module learns to stop)."""
    prompt = render_prompt(tokenizer, messages)
    if getattr(tokenizer, "chat_template", None):
        full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": response}], tokenize=False)
        if full.startswith(prompt):
            return prompt, full[len(prompt):].rstrip("\n")
    return prompt, " " + response + (tokenizer.eos_token or "")


def chat_prompt(tokenizer, messages: object, number: int = 1) -> tuple[str, str]:
    """(the prompt to continue, the text to route on) for conversation #`number` of a request."""
    clean = check_messages(messages, f"conversation #{number}")
    return render_prompt(tokenizer, clean), user_text(clean)


def load_conversations(path) -> list[list[dict]]:
    """Conversations from a file: .json holding one conversation (a list of messages) or a list of them,
    or .jsonl with `{"messages": [...]}` per line; each checked, errors naming the file (and line)."""
    from pathlib import Path

    from ..data import read_json, read_objects

    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        out = []
        for number, record in read_objects(path):
            if "messages" not in record:
                raise DataError(f"{path}:{number}: missing field 'messages'")
            out.append(check_messages(record["messages"], f"{path}:{number}"))
        return out
    if path.suffix.lower() != ".json":
        raise DataError(f"{path}: unsupported file type {path.suffix.lower() or '(none)'!r}; use .json or .jsonl")
    value = read_json(path)
    if isinstance(value, dict) and "messages" in value:
        value = value["messages"]
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        return [check_messages(v, f"{path}: conversation #{i + 1}") for i, v in enumerate(value)]
    return [check_messages(value, str(path))]


def single_turn(prompt: str) -> list[dict]:
    """A plain prompt as a one-turn conversation (how a prompt/response example and a prompt sent to an
    sft module are rendered)."""
    return [{"role": "user", "content": prompt}]
