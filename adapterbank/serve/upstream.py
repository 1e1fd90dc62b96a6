"""`serve --upstream URL`: the bank routes, another OpenAI-compatible engine (vLLM, LoRAX, a second
`adapterbank serve`) generates. Each request is forwarded with `model` set to the module the router
chose (the name it was exported under: `export --peft --all`) or to the upstream's base model; a
streamed answer is passed through as it comes.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import httpx2 as httpx

UPSTREAM_TIMEOUT = 300.0  # seconds for one forwarded request


class Upstream:
    def __init__(self, url: str, base_model: str, api_key: str | None = None):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=UPSTREAM_TIMEOUT)
        self.base_model = base_model

    def model_for(self, task: str | None) -> str:
        return task or self.base_model

    async def post(self, path: str, payload: dict) -> tuple[int, dict]:
        response = await self.client.post(path, json=payload)
        try:
            body = response.json()
        except ValueError:
            body = {"error": {"message": f"upstream answered {response.status_code} without JSON", "type": "upstream_error"}}
        return response.status_code, body

    async def stream(self, path: str, payload: dict) -> tuple[int, AsyncIterator[bytes]]:
        request = self.client.build_request("POST", path, json=payload)
        response = await self.client.send(request, stream=True)

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.aiter_raw():
                    yield chunk
            finally:
                await response.aclose()

        return response.status_code, relay()

    async def gather(self, path: str, payloads: list[dict]) -> list[tuple[int, dict]]:
        return await asyncio.gather(*(self.post(path, p) for p in payloads))

    async def close(self) -> None:
        await self.client.aclose()
