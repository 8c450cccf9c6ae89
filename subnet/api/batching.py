"""`n > 1` as one batch: the choices of one prompt decode together in one (remote) session.

`SharedBatch` runs the backend's `stream_batch` once and fans its events out to one queue per
choice; `SharedBatch.row(i)` looks like a backend whose `stream` yields choice i's events, so
the per-choice code (stop strings, tool calls, logprobs, SSE) is the same as for n = 1. The
batch stops when every choice's stream is closed, or `close()` is called (the request ended).
Rows are seeded seed, seed+1, ... (`SamplingParams.seed_per_row`), so a batched request samples
what n separate single-choice requests with those seeds would (up to batched arithmetic).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from subnet.api.backends import GenerationParams, TokenEvent

_END = object()


class SharedBatch:
    def __init__(self, backend: Any, model: str, prompt_ids: Sequence[int], params: GenerationParams, n: int):
        self.backend, self.model, self.prompt_ids, self.params, self.n = backend, model, list(prompt_ids), params, n
        self.queues: list[asyncio.Queue] = [asyncio.Queue() for _ in range(n)]
        self.open = set(range(n))
        self.task: asyncio.Task | None = None

    @staticmethod
    def supported(backend: Any) -> bool:
        return callable(getattr(backend, "stream_batch", None))

    def _start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        events = self.backend.stream_batch(self.model, self.prompt_ids, self.params, self.n)
        try:
            async for ev in events:
                self.queues[ev.index].put_nowait(ev)
            for q in self.queues:
                q.put_nowait(_END)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # every choice sees the backend's error
            for q in self.queues:
                q.put_nowait(e)
        finally:
            await events.aclose()

    def row(self, index: int) -> _Row:
        return _Row(self, index)

    async def release(self, index: int) -> None:
        self.open.discard(index)
        if not self.open:
            await self.close()

    async def close(self) -> None:
        task, self.task = self.task, None
        self.open.clear()
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class _Row:
    """Backend-shaped view of one choice of a `SharedBatch`."""

    def __init__(self, batch: SharedBatch, index: int):
        self.batch, self.index = batch, index

    async def stream(self, model: str, prompt_ids: Sequence[int],
                     params: GenerationParams) -> AsyncIterator[TokenEvent]:
        self.batch._start()
        queue = self.batch.queues[self.index]
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason:
                    return
        finally:
            await self.batch.release(self.index)
