"""The hoster's in-place KV store: same results as transformers' DynamicCache, no per-step copies,
batched steps attend per session, long prompts run in chunks, the budget charges what is held."""

from __future__ import annotations

import asyncio

import pytest
import torch

import hoster.backend as backend_mod
from hoster.backend import Backend
from hoster.cache import CacheBudget, KVCache, SessionKV, _grown_capacity
from subnet.model.blocks import load_blocks
from tests.waiting import async_wait_until

TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module")
def span(tiny_qwen3):
    return load_blocks(tiny_qwen3, 1, 7, "float32", progress=False)


@pytest.fixture(scope="module")
def sliding_span(tiny_model_factory):
    """Mistral with a 4-position sliding window: masks differ per row in a batch."""
    return load_blocks(tiny_model_factory("mistral", sliding_window=4), 0, 4, "float32", progress=False)


def _h(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _kv(span, batch, max_length):
    return SessionKV(span.start, span.end, batch, max_length, span.num_kv_heads, span.head_dim, span.dtype,
                     span.device)


def _run(span, kv, x):
    """One step on a SessionKV the way the backend runs it (reserve, forward, commit)."""
    kv.reserve(kv.length + x.shape[1])
    out = span(x, cache=KVCache(kv))
    kv.length += x.shape[1]
    return out


def test_in_place_cache_equals_dynamic_cache_with_rollback(span):
    h = _h(2, 40, 64, seed=1)
    dyn, kv = span.new_cache(), _kv(span, 2, 64)
    ref = [span(h[:, :5], cache=dyn)]
    got = [_run(span, kv, h[:, :5])]
    for t in range(5, 40):  # crosses several capacity growths
        ref.append(span(h[:, t:t + 1], cache=dyn))
        got.append(_run(span, kv, h[:, t:t + 1]))
    torch.testing.assert_close(torch.cat(got, 1), torch.cat(ref, 1), **TOL)
    torch.testing.assert_close(torch.cat(got, 1), span(h), **TOL)
    # rollback to 12 and replay different positions
    h2 = _h(2, 20, 64, seed=2)
    dyn.crop(12 - 40)
    KVCache(kv).crop(12 - 40)  # transformers' crop semantics
    torch.testing.assert_close(_run(span, kv, h2[:, 12:]), span(h2[:, 12:], cache=dyn), **TOL)
    assert kv.length == 20


def test_decode_writes_in_place_without_reallocating(span):
    kv = _kv(span, 1, 1000)
    _run(span, kv, _h(1, 100, 64))
    assert kv.capacity >= 100
    ptr, cap = kv.keys[0].data_ptr(), kv.capacity
    for t in range(cap - 100):  # until the spare capacity is used up: same buffers every step
        _run(span, kv, _h(1, 1, 64, seed=t))
        assert kv.keys[0].data_ptr() == ptr
    _run(span, kv, _h(1, 1, 64))
    assert kv.capacity > cap  # grown once, by a chunk
    assert kv.capacity <= _grown_capacity(cap, cap + 1, 1000)


def test_capacity_growth_is_bounded():
    assert _grown_capacity(0, 1024, 1024) == 1024  # a prefill of max_length holds exactly that
    assert _grown_capacity(0, 5, 1000) == 16
    assert _grown_capacity(512, 513, 1000) == 576  # +1/8
    assert _grown_capacity(512, 513, 520) == 520  # never beyond max_length
    for cap in range(0, 2000, 37):
        new = _grown_capacity(cap, cap + 1, 10**6)
        assert cap + 1 <= new <= max(cap + cap // 8, cap + 1) + 16


def test_buffers_grown_in_inference_mode_are_ordinary_tensors():
    """A compiled step's graph guards on the K/V buffers' dispatch keys: a buffer allocated inside
    inference mode (an inference tensor) would miss the graph on every step (hoster.compiled)."""
    kv = SessionKV(0, 2, 1, 64, 2, 8, torch.float32, "cpu")
    with torch.inference_mode():
        kv.reserve(5)
        kv.keys[0][:, :, :5] = 1.0
        kv.length = 5
        kv.reserve(40)  # grown (copied) inside inference mode too
    assert kv.capacity >= 40
    assert not any(t.is_inference() for t in kv.keys + kv.values)
    assert torch.equal(kv.keys[0][:, :, :5], torch.ones(1, 2, 5, 8))


async def test_batched_steps_equal_unbatched_with_sliding_window(sliding_span):
    span = sliding_span
    be = Backend(span, CacheBudget(1000), gather_window=0.05)
    try:
        seqs = [_h(1, 14, 64, seed=20 + i) for i in range(3)]
        prefixes = [2, 9, 6]  # pasts shorter and longer than the window
        sessions = [be.open_session(0, 4, 1, 32) for _ in seqs]
        for s, h, p in zip(sessions, seqs, prefixes):
            await be.step(s, h[:, :p], 0)
        before = be.batches_run
        got = [[] for _ in seqs]
        for t in range(4):
            outs = await asyncio.gather(*[be.step(s, h[:, p + t:p + t + 1], p + t)
                                          for s, h, p in zip(sessions, seqs, prefixes)])
            for g, o in zip(got, outs):
                g.append(o)
        assert be.batches_run >= before + 3
        for g, h, p in zip(got, seqs, prefixes):
            torch.testing.assert_close(torch.cat(g, 1), span(h[:, :p + 4])[:, p:], **TOL)
        # multi-position steps of equal length batched together (mask sliced per session)
        before = be.batches_run
        outs = await asyncio.gather(*[be.step(s, h[:, p + 4:p + 7], p + 4)
                                      for s, h, p in zip(sessions, seqs, prefixes)])
        assert be.batches_run == before + 1
        for o, h, p in zip(outs, seqs, prefixes):
            torch.testing.assert_close(o, span(h[:, :p + 7])[:, p + 4:], **TOL)
    finally:
        be.shutdown()


async def test_batched_step_writes_each_session_in_place(span):
    be = Backend(span, CacheBudget(1000), gather_window=0.05)
    try:
        a, b = be.open_session(1, 7, 1, 64), be.open_session(1, 7, 2, 64)
        ha, hb = _h(1, 10, 64, seed=3), _h(2, 10, 64, seed=4)
        await be.step(a, ha[:, :3], 0)
        await be.step(b, hb[:, :7], 0)
        ptrs = [s.cache.keys[0].data_ptr() for s in (a, b)]
        before = be.batches_run
        for t in range(3):
            oa, ob = await asyncio.gather(be.step(a, ha[:, 3 + t:4 + t], 3 + t), be.step(b, hb[:, 7 + t:8 + t], 7 + t))
        assert be.batches_run == before + 3
        assert [s.cache.keys[0].data_ptr() for s in (a, b)] == ptrs  # no per-step copies of the past
        torch.testing.assert_close(oa, span(ha[:, :6])[:, 5:6], **TOL)
        torch.testing.assert_close(ob, span(hb)[:, 9:10], **TOL)
        # rollback of one session, then batched again
        oa, ob = await asyncio.gather(be.step(a, ha[:, 2:4], 2), be.step(b, hb[:, 5:7], 5))
        torch.testing.assert_close(oa, span(ha[:, :4])[:, 2:4], **TOL)
        torch.testing.assert_close(ob, span(hb[:, :7])[:, 5:7], **TOL)
        assert (a.length, b.length) == (4, 7)
        assert be.budget.usage(a.id) == 4 and be.budget.usage(b.id) == 14
    finally:
        be.shutdown()


async def test_long_prompt_runs_in_chunks_with_same_result(span, monkeypatch):
    monkeypatch.setattr(backend_mod, "PREFILL_CHUNK", 8)
    seen: list[int] = []
    real = type(span).forward

    def spy(self, hidden, *args, **kwargs):
        seen.append(hidden.shape[1])
        return real(self, hidden, *args, **kwargs)

    monkeypatch.setattr(type(span), "forward", spy)
    be = Backend(span, CacheBudget(1000))
    try:
        h = _h(1, 30, 64, seed=6)
        s = be.open_session(1, 7, 1, 40)
        out = await be.step(s, h[:, :27], 0)
        assert seen == [8, 8, 8, 3]
        assert s.cache.capacity == _grown_capacity(0, 27, 40)  # reserved once for the whole step
        out = torch.cat([out, await be.step(s, h[:, 27:], 27)], 1)
        monkeypatch.setattr(type(span), "forward", real)
        torch.testing.assert_close(out, span(h), **TOL)
    finally:
        be.shutdown()


async def test_budget_charges_what_is_held(span):
    be = Backend(span, CacheBudget(1000))
    try:
        s = be.open_session(1, 7, 2, 200)
        per_position = span.kv_bytes_per_token(6) * 2  # batch 2
        await be.step(s, _h(2, 100, 64), 0)
        assert be.budget.usage(s.id) == 200
        assert 100 * per_position <= s.cache_bytes() <= 112 * per_position
        for p in range(100, 120):
            await be.step(s, _h(2, 1, 64, seed=p), p)
        assert be.budget.usage(s.id) == 240 and s.cache_bytes() <= 128 * per_position
        await be.step(s, _h(2, 1, 64), 2)  # rollback: fewer tokens charged, spare memory given back
        assert be.budget.usage(s.id) == 6 and s.cache_bytes() <= 16 * per_position
        be.close_session(s)  # freed on the compute thread
        await async_wait_until(lambda: be.budget.used_tokens == 0 and s.cache_bytes() == 0,
                               "the closed session's tokens and cache memory are freed")
    finally:
        be.shutdown()
