"""The userspace TCP delay proxy (subnet/swarm/delay_proxy.py): per-direction one-way delay, bandwidth
pacing, order and content kept, bounded connections; measured against an echo server on loopback."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from subnet.swarm.delay_proxy import DelayProxy


async def _echo_server():
    async def echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()
    return await asyncio.start_server(echo, "127.0.0.1", 0)


async def _round_trip(port: int, payload: bytes) -> tuple[float, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    writer.write(payload)
    await writer.drain()
    got = await asyncio.wait_for(reader.readexactly(len(payload)), 30)
    elapsed = time.monotonic() - t0
    writer.close()
    return elapsed, got


async def test_round_trip_takes_both_one_way_delays_and_keeps_bytes():
    server = await _echo_server()
    target = server.sockets[0].getsockname()[:2]
    proxy = await DelayProxy(target, delay_up=0.05, delay_down=0.03).start()
    try:
        payload = os.urandom(200_000)
        elapsed, got = await _round_trip(proxy.port, payload)
        assert got == payload
        assert 0.08 <= elapsed < 0.08 + 1.0  # 50 + 30 ms one way each; slack for a loaded machine
        times = [(await _round_trip(proxy.port, b"x"))[0] for _ in range(3)]
        assert min(times) >= 0.08
    finally:
        await proxy.close()
        server.close()


async def test_bandwidth_cap_paces_large_messages():
    server = await _echo_server()
    proxy = await DelayProxy(server.sockets[0].getsockname()[:2], bandwidth=2_000_000).start()
    try:
        elapsed, got = await _round_trip(proxy.port, b"y" * 400_000)  # 0.2 s at 2 MB/s (the echo is pipelined)
        assert got == b"y" * 400_000 and elapsed >= 0.19
    finally:
        await proxy.close()
        server.close()


async def test_connections_beyond_the_bound_are_refused():
    server = await _echo_server()
    proxy = await DelayProxy(server.sockets[0].getsockname()[:2], max_connections=1).start()
    try:
        r1, w1 = await asyncio.open_connection("127.0.0.1", proxy.port)
        w1.write(b"a")
        assert await asyncio.wait_for(r1.readexactly(1), 10) == b"a"
        r2, w2 = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await asyncio.wait_for(r2.read(1), 10) == b""  # closed at once
        assert proxy.refused == 1
        w1.close()
        w2.close()
    finally:
        await proxy.close()
        server.close()


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError):
        DelayProxy(("127.0.0.1", 1), delay_up=-1)
    with pytest.raises(ValueError):
        DelayProxy(("127.0.0.1", 1), bandwidth=0)
