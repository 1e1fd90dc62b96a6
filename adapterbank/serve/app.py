"""`adapterbank serve`: the bank behind an OpenAI-compatible HTTP API (FastAPI).

- `GET /v1/models`: `auto`, every task, and the base. `POST /v1/completions`, `POST /v1/chat/completions`
  (causal banks): `model: "auto"` routes each prompt by its content, a task name forces that module,
  the base's name (or `base`) uses none; `stream: true` answers in server-sent events. Each choice says
  which module answered (`adapterbank`: task, probability, base version, candidates).
- `POST /v1/classify` (classification banks), `POST /v1/route` (both), `GET /healthz`.
- Concurrent requests are gathered into the bank's routed mixed batches (serve/batching.py).
- The bank is live: each batch reads the task list as it is on disk, so a task added or removed with the
  CLI is served (or no longer routed) from the next batch on; a batch in flight finishes on its state.
- Errors are JSON in OpenAI's shape (`{"error": {"message", "type", "param"}}`): 400 for bad input the
  bank refuses, 401 without the API key, 404 for an unknown model, 413 for a body over the limit, 422
  for a field out of range (naming it). No request value ever becomes a file path: task names are
  looked up among the bank's tasks.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from ..errors import AdapterBankError
from ..routing.index import Route
from .batching import DEFAULT_MAX_ITEMS, DEFAULT_MAX_WAIT, Batcher
from .limits import DEFAULT_MAX_BODY, DEFAULT_TOKEN_LIMIT
from .schemas import AUTO, DEFAULT_MAX_TOKENS, ChatRequest, ClassifyRequest, CompletionRequest, TextsRequest

BASE_MODEL = "base"  # besides the base's own id: the model name that uses no module
STREAM_TIMEOUT = 600.0  # seconds a stream waits for its next piece


@dataclass
class ServeConfig:
    api_key: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY
    max_tokens: int = DEFAULT_TOKEN_LIMIT
    max_wait: float = DEFAULT_MAX_WAIT
    max_items: int = DEFAULT_MAX_ITEMS
    upstream: str | None = None  # an OpenAI-compatible engine that generates; the bank only routes
    upstream_model: str = BASE_MODEL  # the upstream's name for the bare base
    upstream_key: str | None = None


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code


def _error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
           code: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status, headers=headers)


def build_app(bank, config: ServeConfig | None = None) -> FastAPI:
    """The ASGI app serving `bank` (an open AdapterBank)."""
    config = config or ServeConfig()
    app = FastAPI(title="adapterbank", docs_url=None, redoc_url=None, openapi_url=None)
    causal = bank.family == "causal"
    batcher = Batcher(lambda key, items: _run(bank, key, items), config.max_wait, config.max_items)
    app.state.batcher = batcher
    upstream = None
    if config.upstream:
        from .upstream import Upstream

        upstream = Upstream(config.upstream, config.upstream_model, config.upstream_key)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if config.api_key is not None and request.url.path != "/healthz":
            given = request.headers.get("authorization", "")
            expected = f"Bearer {config.api_key}"
            if not hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8")):
                return _error(401, "missing or wrong API key (send Authorization: Bearer <key>)", "authentication_error",
                              headers={"WWW-Authenticate": "Bearer"})
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > config.max_body_bytes):
            return _error(413, f"request body over {config.max_body_bytes:,} bytes", param="body")
        if length is None and request.method == "POST":
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > config.max_body_bytes:
                    return _error(413, f"request body over {config.max_body_bytes:,} bytes", param="body")
            request._body = body  # starlette reads it from here
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ())[1:]) or "body"
        return _error(422, f"{field}: {first.get('msg', 'invalid value')}", param=field)

    @app.exception_handler(APIError)
    async def api_error(_request: Request, exc: APIError):
        return _error(exc.status, exc.message, exc.kind, exc.param, exc.code)

    @app.exception_handler(AdapterBankError)
    async def bank_error(_request: Request, exc: AdapterBankError):
        return _error(400, " ".join(str(exc).split()))

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "family": bank.family, "requests": batcher.requests, "batches": batcher.batches}

    @app.get("/v1/models")
    async def models() -> dict:
        names = [AUTO, *(t.name for t in await asyncio.to_thread(bank.tasks)), bank.base_id]
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "adapterbank"} for n in names]}

    @app.post("/v1/route")
    async def route(body: TextsRequest) -> dict:
        routes = await batcher.submit(("route",), body.texts)
        return {"object": "list", "data": [{"task": r.tasks[0] if r.in_scope and r.tasks else None, "in_scope": r.in_scope,
                                            "candidates": [{"task": t, "probability": p} for t, p in zip(r.tasks, r.probabilities)]}
                                           for r in routes]}

    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest) -> dict:
        if causal:
            raise APIError(400, "/v1/classify needs a classification bank; this is a causal-LM bank (use /v1/completions)")
        predictions = await batcher.submit(("classify", body.top_labels, body.task), body.texts)
        return {"object": "list", "data": [{"text": t, **p.to_dict()} for t, p in zip(body.texts, predictions)]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if not prompts or not all(p for p in prompts):
            raise APIError(422, "prompt: expected non-empty text", param="prompt")
        items = [(p, None) for p in prompts]
        return await _generation(body, items, body.max_tokens, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest):
        from ..causal.chat import chat_prompt

        _require_causal()
        messages = [m.model_dump() for m in body.messages]
        try:
            item = chat_prompt(bank.base.tokenizer, messages)
        except AdapterBankError as exc:
            raise APIError(422, f"messages: {exc}", param="messages") from None
        return await _generation(body, [item], body.max_completion_tokens or body.max_tokens, chat=True)

    def _require_causal() -> None:
        if not causal:
            raise APIError(400, "completions need a causal-LM bank; this is a classification bank (use /v1/classify)")

    async def _generation(body, items: list, max_tokens: int | None, chat: bool):
        _require_causal()
        max_tokens = max_tokens or DEFAULT_MAX_TOKENS
        if max_tokens > config.max_tokens:
            raise APIError(422, f"max_tokens: at most {config.max_tokens} on this server", param="max_tokens")
        target = await asyncio.to_thread(_target, bank, body.model)
        if upstream is not None:
            return await _forward(body, items, chat, target, max_tokens)
        key = ("generate", target, max_tokens, body.temperature, body.top_p, body.seed)
        if body.stream and len(items) == 1:
            return StreamingResponse(_stream(body.model, key, items[0], chat), media_type="text/event-stream")
        started = time.time()
        results = await batcher.submit(key, items)
        payload = _completion(body.model, results, chat, started)
        if not body.stream:
            return payload
        return StreamingResponse(_events(payload, chat), media_type="text/event-stream")

    async def _stream(model: str, key: tuple, item: tuple, chat: bool) -> AsyncIterator[bytes]:
        """One prompt's tokens as they are generated: the text in OpenAI chunks, then a last chunk with
        the finish reason and which module answered, then [DONE]. Streams with the same settings share
        batches like any other request; each row's pieces go to its own client's queue."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        sink = lambda piece: loop.call_soon_threadsafe(pieces.put_nowait, piece)  # noqa: E731 (the worker thread's side)
        job = asyncio.ensure_future(batcher.submit(("stream", *key[1:]), [(*item, sink)]))
        job.add_done_callback(lambda _: pieces.put_nowait(None))
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()), "model": model}
        first = True
        while (piece := await asyncio.wait_for(pieces.get(), STREAM_TIMEOUT)) is not None:
            if piece:
                delta = {"delta": {**({"role": "assistant"} if first else {}), "content": piece}} if chat else {"text": piece, "logprobs": None}
                first = False
                yield _sse({**head, "choices": [{"index": 0, **delta, "finish_reason": None}]})
        try:
            [result] = await job
        except Exception as exc:  # the status line is sent: the error travels as an event
            yield _sse({"error": {"message": " ".join(str(exc).split()), "type": "invalid_request_error"}})
        else:
            about = {"task": result.task, "probability": result.probability, "base_version": result.base_version,
                     "candidates": [{"task": t, "probability": p} for t, p in result.candidates]}
            end = {"delta": {}} if chat else {"text": "", "logprobs": None}
            yield _sse({**head, "model": result.task or BASE_MODEL,
                        "choices": [{"index": 0, **end, "finish_reason": "length", "adapterbank": about}]})
        yield b"data: [DONE]\n\n"

    async def _forward(body, items: list, chat: bool, target: tuple, max_tokens: int):
        """Route here, generate upstream: one forwarded request per prompt, `model` set to its module."""
        if target[0] == "auto":
            routes = await batcher.submit(("route",), [route_text or prompt for prompt, route_text in items])
        else:
            routes = [Route([target[1]] if target[1] else [], [1.0] if target[1] else [], target[0] == "task") for _ in items]
        chosen = [r.tasks[0] if r.in_scope and r.tasks else None for r in routes]
        payload = {**body.model_dump(exclude_none=True), "max_tokens": max_tokens}
        payload.pop("max_completion_tokens", None)
        path = "/v1/chat/completions" if chat else "/v1/completions"
        if chat:
            payloads = [{**payload, "model": upstream.model_for(chosen[0])}]
        else:
            payloads = [{**payload, "prompt": prompt, "model": upstream.model_for(task)} for (prompt, _), task in zip(items, chosen)]
        if body.stream and len(payloads) == 1:
            status, events = await upstream.stream(path, payloads[0])
            return StreamingResponse(events, status_code=status, media_type="text/event-stream")
        answers = await upstream.gather(path, [{**p, "stream": False} for p in payloads])
        for status, answer in answers:
            if status != 200:
                return JSONResponse(answer, status)
        choices = []
        for i, ((_, answer), route, task) in enumerate(zip(answers, routes, chosen)):
            for choice in answer.get("choices", [])[:1]:
                choices.append({**choice, "index": i, "adapterbank": {
                    "task": task, "upstream_model": payloads[min(i, len(payloads) - 1)]["model"],
                    "candidates": [{"task": t, "probability": p} for t, p in zip(route.tasks, route.probabilities)]}})
        merged = {**answers[0][1], "choices": choices}
        if body.stream:
            return StreamingResponse(_events(merged, chat), media_type="text/event-stream")
        return merged

    @app.on_event("shutdown")
    async def stop() -> None:
        batcher.close()
        if upstream is not None:
            await upstream.close()

    return app


def _target(bank, model: str) -> tuple[str, str | None]:
    """("auto", None), ("task", name) or ("base", None) for a request's model; 404 for anything else."""
    if model == AUTO:
        return ("auto", None)
    if model in (BASE_MODEL, bank.base_id):
        return ("base", None)
    if model in {t.name for t in bank.tasks()}:
        return ("task", model)
    raise APIError(404, f"model {model!r} does not exist: use 'auto', a task of this bank, or '{BASE_MODEL}' (GET /v1/models)",
                   param="model", code="model_not_found")


def _run(bank, key: tuple, items: list) -> list:
    """The worker thread's call into the bank for one batch."""
    if key[0] == "route":
        return bank.route(items)
    if key[0] == "classify":
        _, top_labels, task = key
        return bank.predict(items, task=task, top_labels=top_labels)
    _, (mode, task), max_tokens, temperature, top_p, seed = (key[0], *key[-5:])
    prompts = [item[0] for item in items]
    route_texts = [item[1] or item[0] for item in items]
    options: dict[str, Any] = {"max_new_tokens": max_tokens, "do_sample": temperature > 0, "top_p": top_p,
                               "seed": seed or 0, "route_texts": route_texts,
                               "rendered": [item[1] is not None for item in items]}  # chat items are already in the chat layout
    if temperature > 0:
        options["temperature"] = temperature
    if key[0] == "stream":  # each item's sink receives its row's pieces as they are generated
        options["on_text"] = lambda row, piece: items[row][2](piece)
    return bank.generate(prompts, task=task, base_only=mode == "base", **options)


def _completion(model: str, results: list, chat: bool, started: float) -> dict:
    choices = []
    for i, result in enumerate(results):
        about = {"task": result.task, "probability": result.probability, "base_version": result.base_version,
                 "candidates": [{"task": t, "probability": p} for t, p in result.candidates]}
        choice = {"index": i, "finish_reason": "length", "adapterbank": about}
        choice.update({"message": {"role": "assistant", "content": result.text}} if chat else {"text": result.text, "logprobs": None})
        choices.append(choice)
    answered = results[0].task if len(results) == 1 else None
    return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion" if chat else "text_completion", "created": int(started),
            "model": answered or (model if model != AUTO or len(results) > 1 else BASE_MODEL), "choices": choices,
            "usage": None}


def _sse(payload: dict) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode("utf-8")


async def _events(payload: dict, chat: bool) -> AsyncIterator[bytes]:
    """The finished completion as server-sent events in OpenAI's chunk format: the text, then the finish."""
    for choice in payload["choices"]:
        text = choice["message"]["content"] if chat else choice["text"]
        for piece, finish in ((text, None), ("", choice["finish_reason"])):
            delta = ({"delta": {"role": "assistant", "content": piece} if finish is None else {}}
                     if chat else {"text": piece, "logprobs": None})
            chunk = {"id": payload["id"], "object": "chat.completion.chunk" if chat else "text_completion",
                     "created": payload["created"], "model": payload["model"],
                     "choices": [{"index": choice["index"], **delta, "finish_reason": finish, "adapterbank": choice["adapterbank"]}]}
            yield _sse(chunk)
    yield b"data: [DONE]\n\n"
