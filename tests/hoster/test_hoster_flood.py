"""Regression (issue 17): a `forward` flood from one peer must not starve another peer's session.

A real `python -m hoster` process; two client peers with their own identities. The honest
peer decodes on an inference session while the flooder fires 40 large `forward` calls at
once. Measured in the same test: the honest step latency stays within 10x (and 2 s) of its
unflooded latency, the flooder gets `busy` rejections, and the hoster's RSS stays bounded.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import hoster_rpc as rh
import pytest
import torch
from test_hoster_process import HosterProcess

from hoster.server import own_p2p_replica

pytestmark = pytest.mark.slow

FLOOD = 40  # concurrent forward calls from one peer
FLOOD_POSITIONS = 3584  # per call: 3.5 MiB of float32 hidden states at hidden 256 (p2pd caps unary messages at 4 MiB)
STEPS = 20


async def _sample_rss(proc: HosterProcess, peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], proc.rss_bytes())
        await asyncio.sleep(0.02)


async def _decode(stream: rh.Stream, x: torch.Tensor, position: int, steps: int, timeout: float) -> list[float]:
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(stream.step(x, position + i), timeout)
        except TimeoutError:
            times.append(float("inf"))
            break
        times.append(time.perf_counter() - t0)
    return times


async def test_forward_flood_does_not_starve_another_peers_session(tiny_model_factory, client_dht_factory):
    path = tiny_model_factory("llama", hidden_size=256, intermediate_size=1024, num_heads=8, num_kv_heads=2)
    proc = HosterProcess("--model", path, "--blocks", "0:8", "--model-name", "flood", "--cache-tokens", "512",
                         "--throughput", "100")
    try:
        honest_dht, flood_dht = client_dht_factory([proc.maddr]), client_dht_factory([proc.maddr])
        honest, flooder = await own_p2p_replica(honest_dht), await own_p2p_replica(flood_dht)
        assert honest.peer_id != flooder.peer_id
        try:
            stream = rh.Stream(honest, proc.peer_id, timeout=30)
            await stream.open("flood", 0, 8, max_length=256)
            g = torch.Generator().manual_seed(0)
            await stream.step(torch.randn(1, 8, 256, generator=g), 0)
            x = torch.randn(1, 1, 256, generator=g)
            await _decode(stream, x, 8, 5, 10)  # warm
            calm = await _decode(stream, x, 13, STEPS, 10)
            rss0 = proc.rss_bytes()

            big = torch.randn(1, FLOOD_POSITIONS, 256, generator=g)
            req = rh.request("flood", {"start": 0, "end": 8}, [big])

            async def one_forward():
                try:
                    return rh.unpack(await rh.call(flooder, proc.peer_id, "rpc_forward", req, timeout=20))
                except rh.RemoteError as e:
                    return e.type
                except Exception as e:
                    return type(e).__name__

            peak, stop = [rss0], asyncio.Event()
            sampler = asyncio.ensure_future(_sample_rss(proc, peak, stop))
            flood = [asyncio.ensure_future(one_forward()) for _ in range(FLOOD)]
            await asyncio.sleep(0.5)  # the flood has arrived
            flooded = await _decode(stream, x, 13 + STEPS, STEPS, 5)
            outcomes = await asyncio.wait_for(asyncio.gather(*flood), 30)
            stop.set()
            await sampler
            await stream.close()
        finally:
            await honest.shutdown()
            await flooder.shutdown()
    finally:
        proc.stop()
    base, hit = statistics.median(calm), statistics.median(flooded)
    rejected = sum(o == "busy" for o in outcomes)
    served = sum(isinstance(o, tuple) for o in outcomes)
    print(f"\nstep median unflooded {base * 1e3:.1f} ms, flooded {hit * 1e3:.1f} ms (max {max(flooded) * 1e3:.1f} ms); "
          f"forwards served {served}, rejected {rejected}, other {FLOOD - served - rejected}; "
          f"RSS {rss0 / 2**20:.0f} MiB -> peak {peak[0] / 2**20:.0f} MiB")
    assert len(flooded) == STEPS and max(flooded) < 2.0  # no step starved (before: 3.2 s median, timeouts)
    # Fair scheduling, not speed: before it the median was 3.2 s; with it 55-70 ms on a quiet machine and
    # ~290 ms with a CPU hog on both cores. A ratio to the calm median (measured at another moment of a
    # busy machine) failed under the hog, so the bound sits between the two regimes.
    assert hit < 1.0
    assert rejected >= FLOOD // 2 and served >= 1  # the flooder is refused with `busy`, yet served a little
    assert peak[0] - rss0 < 150 * 2**20  # before: +710 MiB


def test_forward_units_equal_the_plain_forward(tiny_llama):
    from hoster.backend import Backend
    from hoster.scheduler import MAX_UNIT, UnitPacer, forward_units
    from subnet.model.blocks import load_blocks

    backend = Backend(load_blocks(tiny_llama, 0, 8, progress=False))
    try:
        for shape, budget in [((3, 7), float("inf")), ((2, 600), 0.001), ((9, 40), 0.001), ((1, 300), float("inf"))]:
            x = torch.randn(*shape, 64, generator=torch.Generator().manual_seed(shape[1]))
            units = forward_units(backend.span, x, 1, 7, backend._new_kv, UnitPacer(lambda b=budget: b))
            n = 0
            while True:
                try:
                    next(units)
                    n += 1
                except StopIteration as done:
                    out = done.value
                    break
            torch.testing.assert_close(out, backend.span(x, start=1, end=7), rtol=1e-5, atol=1e-5)
            assert (n == 0) == (shape[0] * shape[1] <= MAX_UNIT and budget == float("inf"))
    finally:
        backend.shutdown()


def test_forward_lane_is_round_robin_over_peers_and_steps_come_first():
    from types import SimpleNamespace

    from hoster.scheduler import TaskQueue

    q = TaskQueue()
    for name in ("a1", "a2", "a3", "b1", "c1", "b2"):
        q.put(SimpleNamespace(session=None, peer=name[0], name=name))
    q.put(SimpleNamespace(session="s", name="step"))
    assert q.qsize() == 7 and q.get_nowait().name == "step"
    assert [q.next_forward().name for _ in range(6)] == ["a1", "b1", "c1", "a2", "b2", "a3"]
    assert q.next_forward() is None and q.qsize() == 0


def test_admission_limits_per_peer():
    from hoster import admission as adm

    a = adm.Admission()
    for _ in range(adm.FORWARD_PER_PEER):
        a.forward("p", 10)
    with pytest.raises(adm.Refused, match="in progress"):
        a.forward("p", 10)
    a.forward("q", 10)  # another peer is not affected
    a.forward_done("p")
    a.forward("p", 10)
    with pytest.raises(adm.Refused, match="retry after"):
        for _ in range(int(adm.INFO_BURST) + 1):
            a.info("r")
    a.info("s")
    assert a.refused == {"forward": 1, "info": 1}
