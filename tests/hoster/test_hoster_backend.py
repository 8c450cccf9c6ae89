"""Compute backend: off-loop compute, batched decode equals separate runs, honest cache accounting."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from hoster.backend import Backend, StepError
from hoster.cache import CacheBudget, CacheFull
from subnet.model.blocks import load_blocks
from tests.waiting import async_wait_until


@pytest.fixture(scope="module")
def span(tiny_qwen3):
    return load_blocks(tiny_qwen3, 1, 7, "float32", progress=False)


@pytest.fixture
def backend(span):
    be = Backend(span, CacheBudget(1000), gather_window=0.02)
    yield be
    be.shutdown()


def _h(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


async def test_run_span_is_the_forward_path_and_thread_safe(backend, span):
    x = _h(2, 5, 64)
    ref = span(x, start=2, end=5)
    assert torch.equal(await backend.forward(x, 2, 5), ref)
    results = []
    threads = [threading.Thread(target=lambda: results.append(backend.run_span(x, 2, 5))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(torch.equal(r, ref) for r in results)
    out16 = backend.run_span(x.to(torch.bfloat16), 2, 5)  # answered in the input dtype
    assert out16.dtype == torch.bfloat16


async def test_concurrent_sessions_batched_equal_separate(backend, span):
    seqs = [_h(1, L, 64, seed=L) for L in (7, 12, 4)]
    refs = [span(h) for h in seqs]
    sessions = [backend.open_session(1, 7, 1, 32) for _ in seqs]
    prefixes = [3, 8, 1]  # different past lengths: per-session attention and masks must be right
    outs = await asyncio.gather(*[backend.step(s, h[:, :p], 0) for s, h, p in zip(sessions, seqs, prefixes)])
    got = [[o] for o in outs]
    for t in range(4):
        live = [i for i in range(3) if prefixes[i] + t < seqs[i].shape[1]]
        step_outs = await asyncio.gather(*[
            backend.step(sessions[i], seqs[i][:, prefixes[i] + t:prefixes[i] + t + 1], prefixes[i] + t) for i in live
        ])
        for i, o in zip(live, step_outs):
            got[i].append(o)
    assert backend.batches_run >= 2, "decode steps that arrive together must run as one batch"
    for i in range(3):
        out = torch.cat(got[i], 1)
        torch.testing.assert_close(out, refs[i][:, :out.shape[1]], rtol=1e-5, atol=1e-5)
    assert backend.budget.used_tokens == sum(s.length for s in sessions)
    for s in sessions:
        backend.close_session(s)
    assert backend.budget.used_tokens == 0


async def test_rollback_replay_and_step_checks(backend, span):
    h = _h(2, 9, 64, seed=5)
    ref = span(h)
    s = backend.open_session(1, 7, 2, 16)
    await backend.step(s, h[:, :6], 0)
    assert backend.budget.usage(s.id) == 12  # batch 2 x 6 positions, charged as it grows
    out = await backend.step(s, h[:, 3:9], 3)  # roll back to 3 and replay
    torch.testing.assert_close(out, ref[:, 3:9], rtol=1e-5, atol=1e-5)
    assert s.length == 9 and backend.budget.usage(s.id) == 18
    with pytest.raises(StepError):
        await backend.step(s, h[:, :1], 10)  # beyond the cached length
    with pytest.raises(StepError):
        await backend.step(s, _h(2, 8, 64), 9)  # beyond max_length
    with pytest.raises(StepError):
        await backend.step(s, _h(1, 1, 64), 9)  # wrong batch size
    assert s.length == 9 and backend.budget.usage(s.id) == 18
    backend.close_session(s)


async def test_budget_busy_and_free(span):
    be = Backend(span, CacheBudget(20))
    try:
        with pytest.raises(CacheFull):
            be.open_session(1, 7, 1, 21)  # could never fit
        a = be.open_session(1, 7, 1, 20)
        b = be.open_session(1, 7, 1, 20)  # admitted: nothing is reserved up front
        await be.step(a, _h(1, 15, 64), 0)
        with pytest.raises(CacheFull):
            await be.step(b, _h(1, 6, 64), 0)  # 15 + 6 > 20
        assert b.length == 0 and be.budget.usage(b.id) == 0
        await be.step(b, _h(1, 5, 64), 0)
        assert be.budget.free_tokens == 0
        with pytest.raises(CacheFull):
            be.open_session(1, 7, 1, 4)
        be.close_session(a)  # freed on the compute thread
        await async_wait_until(lambda: be.budget.free_tokens == 15 and a.cache_bytes() == 0,
                               "the closed session's tokens and cache memory are freed")
    finally:
        be.shutdown()


def test_cache_budget_units():
    b = CacheBudget.from_bytes(10_000, 100)
    assert b.total_tokens == 100
    b.open("s", 2, 50)
    b.resize("s", 60)
    with pytest.raises(CacheFull):
        b.resize("s", 101)
    b.resize("s", 10)
    assert b.free_tokens == 90
    b.close("s")
    assert b.used_tokens == 0 and b.sessions == 0


async def test_batched_mixed_batch_sizes_and_fresh_session(span):
    """A round mixing a fresh session (no past), a batch-2 session and a long one, gathered together."""
    be = Backend(span, CacheBudget(1000), gather_window=0.05)
    try:
        h2, h1 = _h(2, 6, 64, seed=11), _h(1, 9, 64, seed=12)
        fresh = _h(1, 1, 64, seed=13)
        s2, s1, s0 = (be.open_session(1, 7, 2, 16), be.open_session(1, 7, 1, 16), be.open_session(1, 7, 1, 16))
        await be.step(s2, h2[:, :5], 0)
        await be.step(s1, h1[:, :8], 0)
        before = be.batches_run
        o2, o1, o0 = await asyncio.gather(be.step(s2, h2[:, 5:6], 5), be.step(s1, h1[:, 8:9], 8),
                                          be.step(s0, fresh, 0))
        assert be.batches_run == before + 1
        torch.testing.assert_close(o2, span(h2)[:, 5:6], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(o1, span(h1)[:, 8:9], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(o0, span(fresh), rtol=1e-5, atol=1e-5)
        assert (s2.length, s1.length, s0.length) == (6, 9, 1)
        # the caches written back by the batched round keep working for single steps
        more = _h(2, 1, 64, seed=14)
        full = torch.cat([h2, more], 1)
        torch.testing.assert_close(await be.step(s2, more, 6), span(full)[:, 6:7], rtol=1e-5, atol=1e-5)
    finally:
        be.shutdown()
