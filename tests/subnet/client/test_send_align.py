"""`SendAligner`: concurrent sessions on one route send their decode steps in one round."""

from __future__ import annotations

import asyncio
import time

from subnet.client.send_align import SendAligner, _Route

ROUTE = (("peerA", 0, 4), ("peerB", 4, 8))
OTHER = (("peerC", 0, 8),)


def _aligner(max_wait: float, *active: int) -> SendAligner:
    """An aligner on which sessions `active` have stepped before (and are expected in the next round)."""
    al = SendAligner(max_wait)
    al._routes[ROUTE] = _Route(missed={s: False for s in active})
    return al


async def _arrive(al: SendAligner, key, sid: int, log: list, delay: float = 0.0) -> None:
    await asyncio.sleep(delay)
    await al.ready(key, sid)
    log.append((sid, time.monotonic()))


async def test_a_lone_session_never_waits():
    al = SendAligner(1.0)
    t0 = time.monotonic()
    for _ in range(5):
        await al.ready(ROUTE, 1)
    assert time.monotonic() - t0 < 0.1
    assert al.sizes == {1: 5}


async def test_sessions_stepping_apart_go_together_once_both_are_active():
    al = _aligner(1.0, 1, 2)
    log: list = []
    t0 = time.monotonic()
    await asyncio.gather(_arrive(al, ROUTE, 1, log), _arrive(al, ROUTE, 2, log, delay=0.05))
    assert all(0.04 < t - t0 < 0.2 for _, t in log)  # session 1 waited for 2: both went when 2 came
    assert al.sizes[2] == 1


async def test_a_late_session_is_waited_for_once_then_not_until_it_steps_again():
    al = _aligner(0.1, 1, 2, 3)
    t0 = time.monotonic()
    await asyncio.gather(al.ready(ROUTE, 1), al.ready(ROUTE, 2))  # 3 does not come: one wait (<= 0.1 s)
    waited = time.monotonic() - t0
    assert 0.05 < waited < 0.5
    t0 = time.monotonic()
    await asyncio.gather(al.ready(ROUTE, 1), al.ready(ROUTE, 2))  # 3 missed a round: not expected now
    assert time.monotonic() - t0 < 0.05
    log: list = []  # 3 steps again and waits for the others' next step: the three merge in one round
    await asyncio.gather(_arrive(al, ROUTE, 3, log), _arrive(al, ROUTE, 1, log, 0.03), _arrive(al, ROUTE, 2, log, 0.03))
    assert max(t for _, t in log) - min(t for _, t in log) < 0.02
    assert al.sizes[3] == 1


async def test_the_wait_is_one_step_cycle_and_capped():
    al = SendAligner(0.2)
    assert al.wait(ROUTE) == 0.2  # nothing measured yet: the cap
    for _ in range(4):
        await al.ready(ROUTE, 1)
        await asyncio.sleep(0.04)
    assert 0.03 < al.wait(ROUTE) < 0.1  # ~40 ms
    al2 = SendAligner(0.01)
    for _ in range(3):
        await al2.ready(ROUTE, 1)
        await asyncio.sleep(0.04)
    assert al2.wait(ROUTE) == 0.01


async def test_leaving_releases_a_round_waiting_for_that_session():
    al = _aligner(5.0, 1, 2)
    waiting = asyncio.ensure_future(al.ready(ROUTE, 1))
    await asyncio.sleep(0.02)
    assert not waiting.done()
    al.leave(ROUTE, 2)
    await asyncio.wait_for(waiting, 0.5)
    al.leave(ROUTE, 1)
    assert al._routes == {}  # nothing kept for a route nobody uses


async def test_routes_are_independent_and_zero_turns_it_off():
    al = _aligner(5.0, 1, 2)
    await asyncio.wait_for(al.ready(OTHER, 1), 0.1)  # nobody else on OTHER: no wait
    off = SendAligner(0.0)
    await off.ready(ROUTE, 1)
    await off.ready(ROUTE, 2)
    await asyncio.wait_for(off.ready(ROUTE, 1), 0.1)
    assert off.sizes == {}


async def test_a_cancelled_leader_lets_its_round_go():
    al = _aligner(5.0, 1, 2, 3)
    leader = asyncio.ensure_future(al.ready(ROUTE, 1))
    await asyncio.sleep(0.01)
    joiner = asyncio.ensure_future(al.ready(ROUTE, 2))  # 3 never comes
    await asyncio.sleep(0.01)
    leader.cancel()
    await asyncio.wait_for(joiner, 0.5)
    assert al._routes[ROUTE].round is None


def test_a_negative_or_nan_align_wait_is_refused():
    import pytest

    from subnet.client.manager import ClientConfig

    assert ClientConfig(align_wait=0.0).align_wait == 0.0
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="align_wait"):
            ClientConfig(align_wait=bad)
