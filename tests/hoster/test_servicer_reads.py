"""The inference handler's request reads: a read given up never stays pending on the stream."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from hoster.servicer import BlockServicer


class _Requests:
    """A request stream whose next request never comes; it records how its pending read ended."""

    def __init__(self):
        self.reading = asyncio.Event()
        self.cancelled = False

    def __aiter__(self):
        return self

    async def __anext__(self):
        self.reading.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled = True
            raise


def test_a_cancelled_read_ahead_cancels_its_pending_read():
    """A pushed step reads the stream's next request ahead (`ahead`) and cancels it when the stream ends.
    The inner read must end with it: left pending, asyncio destroyed it with "Task was destroyed but it is
    pending!" and the stream's close failed with "aclose(): asynchronous generator is already running"
    (seen in a hoster's log during the generation benchmark)."""

    async def main() -> bool:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        servicer = SimpleNamespace(_stop_future=lambda: stop)
        requests = _Requests()
        ahead = asyncio.ensure_future(BlockServicer._next(servicer, requests, 60.0))
        await asyncio.wait_for(requests.reading.wait(), 5)
        ahead.cancel()
        await asyncio.gather(ahead, return_exceptions=True)
        await asyncio.sleep(0)  # the inner read's cancellation runs
        return requests.cancelled

    assert asyncio.run(main())
