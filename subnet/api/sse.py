"""HTTP plumbing of the OpenAI routes: SSE framing, cleanup-safe streaming responses, and
cancelling a non-streaming generation when its client disconnects."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse

DISCONNECTED = object()


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def run_unless_disconnected(request: Request, coro):
    """Run `coro`, cancelling it if the HTTP client goes away first (non-streaming requests)."""
    task = asyncio.ensure_future(coro)
    watch = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        return DISCONNECTED
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            try:
                await task
            except BaseException:
                pass


class SSEResponse(StreamingResponse):
    """A streaming response that always runs `cleanup` (close the generation, free the slot),
    even when the client disconnects before the body iterator ever started."""

    def __init__(self, content: AsyncIterator[str], cleanup):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._cleanup = cleanup

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.body_iterator.aclose()  # type: ignore[attr-defined]
            finally:
                await self._cleanup()


def sse(obj: dict | str) -> str:
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n"
