"""Request bodies of the HTTP API (the OpenAI schema's fields that the bank honours, and its own
classify/route), with their bounds: a value out of range is a 422 naming the field."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..settings import MAX_SEED

MAX_TEXTS = 256  # texts or prompts in one request
MAX_TEXT_CHARS = 100_000  # characters in one text, prompt or message
MAX_MESSAGES = 256
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions
AUTO = "auto"  # the model name that routes each request by its content

Text = Field(min_length=1, max_length=MAX_TEXT_CHARS)


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields the bank does not use (user, n=1, ...)


class _Generation(_Request):
    model: str = Field(AUTO, min_length=1, max_length=200)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)  # OpenAI's range; 0 is greedy decoding
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stream: bool = False
    n: int = Field(1, ge=1, le=1)


class CompletionRequest(_Generation):
    prompt: str | list[str] = Field(..., max_length=MAX_TEXTS)


class Message(_Request):
    role: Literal["system", "user", "assistant"]
    content: str = Field(..., max_length=MAX_TEXT_CHARS)


class ChatRequest(_Generation):
    messages: list[Message] = Field(..., min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1)


class TextsRequest(_Request):
    texts: list[str] = Field(..., min_length=1, max_length=MAX_TEXTS)


class ClassifyRequest(TextsRequest):
    top_labels: int = Field(0, ge=0, le=100)
    task: str | None = Field(None, min_length=1, max_length=64)
