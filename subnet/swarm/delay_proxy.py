"""A userspace TCP proxy that adds one-way latency (and optionally a bandwidth cap) per direction.

The kernel here has no netem, so WAN conditions are made in userspace: a node listens on its real
port and announces the proxy's port (`--announce-maddrs`), so every connection to it crosses the
proxy. Bytes read from one side are written to the other `delay` seconds after they arrived (per
direction), and with `bandwidth` (bytes/s) paced as if sent over a link of that rate, so a
message of n bytes lands at `max(arrival, link free) + n / bandwidth + delay`. Order is kept.

Bounded: at most `max_connections` proxied connections (more are refused), at most
`max_buffer` bytes in flight per direction (the reader stops reading until the writer catches up,
so TCP back-pressure reaches the sender), reads of at most `CHUNK` bytes.
Used by `benchmarks/wan.py` and the network tests; no project imports.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable

CHUNK = 64 * 1024
MAX_BUFFER = 8 * 1024 * 1024
MAX_CONNECTIONS = 256


class _Pipe:
    """One direction of one connection: read, hold for the delay (and pacing), write, in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: Callable[[], float],
                 bandwidth: float | None, max_buffer: int):
        self.reader, self.writer = reader, writer
        self.delay, self.bandwidth, self.max_buffer = delay, bandwidth, max_buffer
        self.queue: deque[tuple[float, bytes]] = deque()
        self.buffered = 0
        self.link_free = 0.0  # when the paced link finishes sending what it has
        self.changed = asyncio.Event()
        self.eof = False

    async def pump_in(self) -> None:
        try:
            while True:
                while self.buffered >= self.max_buffer:
                    self.changed.clear()
                    await self.changed.wait()
                data = await self.reader.read(CHUNK)
                now = time.monotonic()
                if not data:
                    break
                start = now
                if self.bandwidth:
                    start = max(now, self.link_free) + len(data) / self.bandwidth
                    self.link_free = start
                self.queue.append((start + self.delay(), data))
                self.buffered += len(data)
                self.changed.set()
        finally:
            self.eof = True
            self.changed.set()

    async def pump_out(self) -> None:
        while True:
            if not self.queue:
                if self.eof:
                    break
                self.changed.clear()
                await self.changed.wait()
                continue
            due, data = self.queue[0]
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self.queue.popleft()
            self.buffered -= len(data)
            self.changed.set()
            self.writer.write(data)
            await self.writer.drain()
        with contextlib.suppress(OSError, RuntimeError):
            if self.writer.can_write_eof():
                self.writer.write_eof()


class DelayProxy:
    """Forward `listen` -> `target` with `delay_up` (towards target) and `delay_down` (back) seconds."""

    def __init__(self, target: tuple[str, int], *, delay_up: float = 0.0, delay_down: float | None = None,
                 bandwidth: float | None = None, listen: tuple[str, int] = ("127.0.0.1", 0),
                 max_buffer: int = MAX_BUFFER, max_connections: int = MAX_CONNECTIONS):
        if delay_up < 0 or (delay_down is not None and delay_down < 0):
            raise ValueError("delays must be >= 0")
        if bandwidth is not None and bandwidth <= 0:
            raise ValueError("bandwidth must be positive (bytes/s) or None")
        self.target, self.listen = target, listen
        self.delay_up = delay_up
        self.delay_down = delay_up if delay_down is None else delay_down
        self.bandwidth, self.max_buffer, self.max_connections = bandwidth, max_buffer, max_connections
        self.connections = 0
        self.refused = 0
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def port(self) -> int:
        assert self._server is not None, "proxy not started"
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> DelayProxy:
        self._server = await asyncio.start_server(self._accept, *self.listen)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        if self.connections >= self.max_connections:
            self.refused += 1
            c_writer.close()
            return
        self.connections += 1
        task = asyncio.current_task()
        self._tasks.add(task)
        t_writer = None
        try:
            t_reader, t_writer = await asyncio.wait_for(asyncio.open_connection(*self.target), 10)
            # delays are read per chunk, so set_delay() applies to open connections too
            up = _Pipe(c_reader, t_writer, lambda: self.delay_up, self.bandwidth, self.max_buffer)
            down = _Pipe(t_reader, c_writer, lambda: self.delay_down, self.bandwidth, self.max_buffer)
            await asyncio.gather(up.pump_in(), up.pump_out(), down.pump_in(), down.pump_out())
        except (TimeoutError, OSError, ConnectionError):
            pass
        finally:
            self.connections -= 1
            self._tasks.discard(task)
            for w in (c_writer, t_writer):
                if w is not None:
                    with contextlib.suppress(Exception):
                        w.close()


class ProxyThread:
    """Run `DelayProxy`s on a private event loop thread (for synchronous callers: tests, benchmarks)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="delay-proxy", daemon=True)
        self._thread.start()
        self.proxies: list[DelayProxy] = []

    def add(self, target: tuple[str, int], **kwargs) -> DelayProxy:
        proxy = DelayProxy(target, **kwargs)
        asyncio.run_coroutine_threadsafe(proxy.start(), self.loop).result(10)
        self.proxies.append(proxy)
        return proxy

    def set_delay(self, delay_up: float, delay_down: float | None = None) -> None:
        """Change every proxy's delays, open connections included (bytes in flight keep theirs)."""
        def apply() -> None:
            for p in self.proxies:
                p.delay_up, p.delay_down = delay_up, delay_up if delay_down is None else delay_down
        self.loop.call_soon_threadsafe(apply)

    def close(self) -> None:
        for p in self.proxies:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(p.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
