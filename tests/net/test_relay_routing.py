"""Routing prefers direct hosters to relayed ones (announced `relayed`), and still uses a relayed
hoster when nobody else serves its blocks; the `relayed` field round-trips and is type-checked."""

from __future__ import annotations

import pytest

from subnet.client.routing import RELAY_PENALTY, Span, find_route
from subnet.swarm.announcements import Announcement


def srv(pid: str, start: int, end: int, relayed: bool = False) -> Announcement:
    return Announcement(pid, "m", start, end, num_blocks=8, hidden_size=64, throughput=100.0,
                        cache_tokens_free=10_000, relayed=relayed)


def test_direct_route_beats_an_equal_relayed_one():
    for order in ([srv("nat", 0, 8, True), srv("direct", 0, 8)], [srv("direct", 0, 8), srv("nat", 0, 8, True)]):
        assert find_route(order, 0, 8) == [Span("direct", 0, 8)]


def test_relayed_hoster_is_used_when_it_is_the_only_one():
    route = find_route([srv("a", 0, 4), srv("nat", 4, 8, True)], 0, 8)
    assert route == [Span("a", 0, 4), Span("nat", 4, 8)]


def test_a_measured_fast_relayed_hoster_can_still_win():
    pings = {"nat": 0.001, "direct": 0.001 + 2 * RELAY_PENALTY}
    assert find_route([srv("nat", 0, 8, True), srv("direct", 0, 8)], 0, 8, pings=pings) == [Span("nat", 0, 8)]


def test_relayed_field_round_trips_and_rejects_junk():
    payload = srv("p", 0, 8, True).to_payload()
    assert Announcement.from_payload(payload).relayed is True
    assert Announcement.from_payload({k: v for k, v in payload.items() if k != "relayed"}).relayed is False
    with pytest.raises(ValueError, match="relayed"):
        Announcement.from_payload({**payload, "relayed": "yes"})
