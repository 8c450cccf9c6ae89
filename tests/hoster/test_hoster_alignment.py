"""Concurrent decoders computed together stay together (no alternating half-batches),
and a lone session never waits."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from hoster.backend import Backend
from hoster.cache import CacheBudget
from subnet.model.blocks import load_blocks
from subnet.model.memory import trim


@pytest.fixture(scope="module")
def span(tiny_llama):
    return load_blocks(tiny_llama, 0, 4, "float32", progress=False)


def _h(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


async def test_batch_mates_are_waited_for(span):
    be = Backend(span, CacheBudget(1000), gather_window=0.2, align_wait=0.5)
    try:
        a, b = be.open_session(0, 4, 1, 32), be.open_session(0, 4, 1, 32)
        ha, hb = _h(1, 6, 64, seed=1), _h(1, 6, 64, seed=2)
        await be.step(a, ha[:, :4], 0)
        await be.step(b, hb[:, :4], 0)
        await asyncio.gather(be.step(a, ha[:, 4:5], 4), be.step(b, hb[:, 4:5], 4))  # batched (gather window)
        be.gather_window = 0.0  # from now on only the alignment can batch them
        before = be.batches_run
        ta = asyncio.ensure_future(be.step(a, ha[:, 5:6], 5))
        await asyncio.sleep(0.05)
        assert not ta.done(), "a's step must wait for b, its batch mate of the last round"
        ob = await be.step(b, hb[:, 5:6], 5)
        oa = await ta
        assert be.batches_run == before + 1
        torch.testing.assert_close(oa, span(ha)[:, 5:6], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ob, span(hb)[:, 5:6], rtol=1e-5, atol=1e-5)
    finally:
        be.shutdown()


async def test_lone_session_and_closed_mates_do_not_wait(span):
    be = Backend(span, CacheBudget(1000), gather_window=0.2, align_wait=2.0)
    try:
        a, b = be.open_session(0, 4, 1, 32), be.open_session(0, 4, 1, 32)
        h = _h(1, 8, 64, seed=3)
        await be.step(a, h[:, :4], 0)
        await be.step(b, h[:, :4], 0)
        await asyncio.gather(be.step(a, h[:, 4:5], 4), be.step(b, h[:, 4:5], 4))
        be.gather_window = 0.0
        be.close_session(b)  # b finished: a must not wait for it
        t0 = time.monotonic()
        for p in range(5, 8):
            await be.step(a, h[:, p:p + 1], p)
        assert time.monotonic() - t0 < 1.0
    finally:
        be.shutdown()


def test_trim_is_safe_to_call():
    trim()
    trim()


async def test_gather_window_only_while_other_sessions_are_active(span):
    """The fixed window batches concurrent decoders; a lone decoder must not pay it per token."""
    be = Backend(span, CacheBudget(1000), gather_window=2.0)
    try:
        a = be.open_session(0, 4, 1, 32)
        await be.step(a, _h(1, 4, span.hidden_size), 0)
        t0 = time.monotonic()
        for t in range(4, 8):
            await be.step(a, _h(1, 1, span.hidden_size, seed=t), t)
        assert time.monotonic() - t0 < 2.0  # 4 steps; each would wait 2 s if the window applied
        b = be.open_session(0, 4, 1, 32)  # a second session that just arrived counts as active
        b.last_used = time.monotonic()
        t0 = time.monotonic()
        await be.step(a, _h(1, 1, span.hidden_size, seed=9), 8)
        assert time.monotonic() - t0 >= 1.9
    finally:
        be.shutdown()
