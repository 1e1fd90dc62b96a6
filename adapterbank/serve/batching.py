"""Batching across requests: concurrent requests are gathered into one routed mixed batch.

The HTTP side is asyncio; the model runs in one worker thread (torch releases the GIL, and one bank
object is not meant to run two batches at once). A request submits its items with a key saying which
work can share a batch (`classify`, or `generate` with the same decoding settings); the worker takes the
first waiting job, waits at most `max_wait` seconds for more jobs of the same key, up to `max_items`
items, runs them as one call, and hands each request its slice. A slow client never blocks others: the
worker waits for jobs, never for a client, and results are delivered as soon as a batch ends.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

DEFAULT_MAX_WAIT = 0.005  # seconds a batch waits for more requests once it has one
DEFAULT_MAX_ITEMS = 64  # items (texts or prompts) in one batch


@dataclass
class _Job:
    key: Hashable
    items: list
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class Batcher:
    """`await batcher.submit(key, items)` -> one result per item; `run(key, items)` (called in the worker
    thread with the items of every job in the batch) returns one result per item, in order."""

    def __init__(self, run: Callable[[Hashable, list], Sequence[Any]], max_wait: float = DEFAULT_MAX_WAIT,
                 max_items: int = DEFAULT_MAX_ITEMS):
        self._run, self.max_wait, self.max_items = run, max_wait, max_items
        self._queue: "queue.Queue[_Job | None]" = queue.Queue()
        self._held: list[_Job] = []  # jobs taken from the queue that did not fit the last batch
        self._thread = threading.Thread(target=self._work, name="adapterbank-batcher", daemon=True)
        self.batches = self.requests = 0  # counters for /healthz: how well requests share batches
        self._thread.start()

    async def submit(self, key: Hashable, items: list) -> list:
        loop = asyncio.get_running_loop()
        job = _Job(key, list(items), loop, loop.create_future())
        self._queue.put(job)
        return await job.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    # -- the worker thread ----------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            first = self._held.pop(0) if self._held else self._queue.get()
            if first is None:
                return
            batch, count = [first], len(first.items)
            kept = []
            for job in self._held:  # jobs of this key that came while another key's batch ran
                if job.key == first.key and count + len(job.items) <= self.max_items:
                    batch.append(job)
                    count += len(job.items)
                else:
                    kept.append(job)
            self._held = kept
            deadline, closing = time.perf_counter() + self.max_wait, False
            while count < self.max_items:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    job = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
                if job is None:
                    closing = True
                    break
                if job.key == first.key and count + len(job.items) <= self.max_items:
                    batch.append(job)
                    count += len(job.items)
                else:
                    self._held.append(job)
            self._execute(first.key, batch)
            if closing:
                self._queue.put(None)

    def _execute(self, key: Hashable, batch: list[_Job]) -> None:
        items = [item for job in batch for item in job.items]
        self.requests += len(batch)
        try:
            results = list(self._run(key, items))
            error = None
        except BaseException as exc:  # every waiting request gets the error; the worker lives on
            results, error = [], exc
        self.batches += 1
        start = 0
        for job in batch:
            if error is not None:
                job.loop.call_soon_threadsafe(_settle, job.future, None, error)
            else:
                job.loop.call_soon_threadsafe(_settle, job.future, results[start:start + len(job.items)], None)
            start += len(job.items)


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
