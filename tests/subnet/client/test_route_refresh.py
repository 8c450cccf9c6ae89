"""Routing never waits long on the DHT: a lookup can stall on a frozen peer.

A random-order stress run once stalled a stream 33.6 s: a check of the replacement hoster
(holding tokens back) found no other route in the known hoster list, forced a DHT read, and
that read hung on the frozen hoster's DHT node until the 30 s request timeout. Checks now route
with the hosters already known, and a forced read is bounded by `dht_timeout`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest

from subnet.client import discovery
from subnet.client.manager import ClientConfig, SequenceManager
from subnet.client.routing import RouteError
from subnet.client.verification import StepVerifier
from subnet.swarm.announcements import Announcement


def ann(peer: str, start: int, end: int) -> Announcement:
    return Announcement(peer_id=peer, model="m", start=start, end=end, num_blocks=8, hidden_size=64,
                        throughput=10.0, cache_tokens_free=1000, cache_tokens_total=1000)


@pytest.fixture
def stalled_dht(monkeypatch):
    """`discovery.read_servers` hangs (a DHT lookup stuck on a frozen peer) until the test ends."""
    release, calls = threading.Event(), []

    def read_servers(*args):
        calls.append(args)
        release.wait(3)
        return []

    monkeypatch.setattr(discovery, "read_servers", read_servers)
    yield calls
    release.set()


def manager(servers: list[Announcement], **config) -> SequenceManager:
    m = SequenceManager(SimpleNamespace(dht=None, p2p=None), "m", 8, config=ClientConfig(**config))
    m._servers, m._fetched_at = list(servers), time.monotonic()  # a fresh list: no background read
    for s in servers:
        m.stats.record_ping(s.peer_id, 0.01)  # no hoster runs here: skip the rpc_info pings
    return m


KNOWN = [ann("a", 0, 4), ann("b", 4, 8)]


def test_routes_from_the_known_list_without_a_dht_read(stalled_dht):
    m = manager(KNOWN)
    route = asyncio.run(m.make_route(0, 8, refresh=False))
    assert [s.peer_id for s in route] == ["a", "b"] and stalled_dht == []


def test_without_refresh_a_missing_route_fails_at_once(stalled_dht):
    m = manager(KNOWN)
    t0 = time.monotonic()
    with pytest.raises(RouteError):
        asyncio.run(m.make_route(0, 4, exclude={"a"}, refresh=False))
    assert time.monotonic() - t0 < 1.0 and stalled_dht == []


def test_a_stalled_dht_read_is_bounded_and_gives_a_route_error(stalled_dht):
    """The forced re-read after "no route" gives up after `dht_timeout`, not the 30 s request timeout,
    and the caller gets the usual RouteError (not a TimeoutError from deep inside)."""
    m = manager(KNOWN, dht_timeout=0.5)

    async def timed() -> float:
        t0 = time.monotonic()
        with pytest.raises(RouteError):
            await m.make_route(0, 4, exclude={"a"})
        return time.monotonic() - t0  # (asyncio.run then waits for the stuck reader thread to end)

    assert 0.4 < asyncio.run(timed()) < 5.0 and len(stalled_dht) == 1


def test_checks_route_with_the_known_hosters_only():
    """A check (subnet/client/verification.py) may hold tokens back: it must not wait for the DHT."""
    seen = {}

    async def make_route(start, end, **kwargs):
        seen.update(kwargs, start=start, end=end)
        raise RouteError("no other route")

    session = SimpleNamespace(manager=SimpleNamespace(make_route=make_route, config=ClientConfig()),
                              excluded=set(), adapter=None)
    import torch

    out = asyncio.run(StepVerifier(0.0)._recompute(session, torch.zeros(1, 3, 8), 0, 4, {"a"}))
    assert out is None and seen["refresh"] is False and seen["exclude"] == {"a"}


def test_waiting_until_servable_leaves_the_shared_config_alone():
    """`wait_until_servable(timeout)` is that call's own wait: sessions routing meanwhile keep
    `wait_for_coverage` (it used to be swapped in the manager's shared config)."""
    from subnet.client.model import DistributedModelForCausalLM

    config = ClientConfig()
    seen = {}

    async def make_route(**kwargs):
        seen.update(kwargs, config=fake.manager.config)
        return []

    fake = SimpleNamespace(manager=SimpleNamespace(config=config, make_route=make_route),
                           runtime=SimpleNamespace(run=lambda coro, timeout: asyncio.run(coro)))
    DistributedModelForCausalLM.wait_until_servable(fake, 12.0)
    assert seen["wait_for_coverage"] == 12.0 and seen["config"] is config and config.wait_for_coverage == 0.0
