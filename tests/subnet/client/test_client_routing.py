"""Route finding, bans and load spreading, on plain values."""

from __future__ import annotations

import pytest

from subnet.client.routing import BanList, RouteError, RouteStats, Span, find_route
from subnet.swarm.announcements import Announcement


def srv(pid: str, start: int, end: int, tput: float = 100.0, free: int = 10_000, state: str = "online") -> Announcement:
    return Announcement(pid, "m", start, end, num_blocks=8, hidden_size=64, throughput=tput, cache_tokens_free=free,
                        state=state)


def covers(route: list[Span], start: int, end: int) -> bool:
    pos = start
    for s in route:
        if s.start != pos or s.end <= s.start:
            return False
        pos = s.end
    return pos == end


def test_single_hoster_covers_everything():
    assert find_route([srv("a", 0, 8)], 0, 8) == [Span("a", 0, 8)]


def test_chain_of_three():
    route = find_route([srv("a", 0, 3), srv("b", 3, 6), srv("c", 6, 8)], 0, 8)
    assert route == [Span("a", 0, 3), Span("b", 3, 6), Span("c", 6, 8)]


def test_prefers_lower_latency():
    servers = [srv("slow", 0, 8), srv("fast", 0, 8)]
    route = find_route(servers, 0, 8, pings={"slow": 0.5, "fast": 0.01})
    assert route == [Span("fast", 0, 8)]


def test_prefers_fewer_hops_when_ping_dominates():
    servers = [srv("a", 0, 4), srv("b", 4, 8), srv("full", 0, 8, tput=50.0)]
    route = find_route(servers, 0, 8, pings={"a": 0.1, "b": 0.1, "full": 0.1})
    assert route == [Span("full", 0, 8)]


def test_prefers_higher_throughput():
    servers = [srv("weak", 0, 8, tput=1.0), srv("strong", 0, 8, tput=1000.0)]
    assert find_route(servers, 0, 8, pings={"weak": 0.01, "strong": 0.01}) == [Span("strong", 0, 8)]


def test_overlapping_spans_are_cut():
    route = find_route([srv("a", 0, 5), srv("b", 3, 8)], 0, 8, pings={"a": 0.01, "b": 0.01})
    assert covers(route, 0, 8) and [s.peer_id for s in route] == ["a", "b"]


def test_prefers_hosters_with_cache_room():
    servers = [srv("full", 0, 8, free=10), srv("roomy", 0, 8, free=10_000)]
    route = find_route(servers, 0, 8, pings={"full": 0.001, "roomy": 0.05}, cache_tokens_needed=512)
    assert route == [Span("roomy", 0, 8)]
    # ...but a full hoster is still better than no route at all
    assert find_route([srv("full", 0, 8, free=10)], 0, 8, cache_tokens_needed=512) == [Span("full", 0, 8)]


def test_excluded_and_offline_are_skipped():
    servers = [srv("a", 0, 8), srv("b", 0, 8, state="offline"), srv("c", 0, 8)]
    assert find_route(servers, 0, 8, exclude={"a"}) == [Span("c", 0, 8)]


def test_sub_range_for_rerouting_can_split():
    servers = [srv("x", 2, 5), srv("y", 5, 9)]
    assert find_route(servers, 3, 7) == [Span("x", 3, 5), Span("y", 5, 7)]


def test_missing_block_is_named():
    with pytest.raises(RouteError, match="block 5"):
        find_route([srv("a", 0, 5), srv("b", 6, 8)], 0, 8)
    with pytest.raises(RouteError):
        find_route([], 0, 8)


def test_load_spreads_sessions():
    servers = [srv("a", 0, 8), srv("b", 0, 8)]
    stats = RouteStats()
    chosen = []
    for _ in range(4):
        route = find_route(servers, 0, 8, pings={"a": 0.01, "b": 0.011}, load=stats.load)
        stats.acquire(route)
        chosen.append(route[0].peer_id)
    assert sorted(chosen) == ["a", "a", "b", "b"]
    stats.release([Span("a", 0, 8)] * 2)
    assert "a" not in stats.load


def test_ban_backoff_doubles_and_expires():
    now = [0.0]
    bans = BanList(base=1.0, maximum=5.0, clock=lambda: now[0])
    assert bans.ban("p") == 1.0
    assert bans.is_banned("p")
    now[0] = 1.5
    assert not bans.is_banned("p")
    assert bans.ban("p") == 2.0
    assert bans.ban("p") == 4.0
    assert bans.ban("p") == 5.0  # capped
    assert bans.banned() == {"p"}
    bans.success("p")
    assert not bans.is_banned("p") and bans.ban("p") == 1.0


def test_the_writer_payload_parses_back_and_garbage_is_rejected():
    """One schema: what a hoster writes (`to_payload`) is exactly what readers parse."""
    ann = srv("p", 0, 4, tput=10.0)
    assert Announcement.from_payload(ann.to_payload()) == ann
    assert Announcement.from_payload({**ann.to_payload(), "future_field": 1}) == ann  # newer writers
    good = ann.to_payload()
    for bad in ({**good, "start": 4}, {**good, "end": 9}, {**good, "throughput": float("nan")},
                {**good, "state": "weird"}, {k: v for k, v in good.items() if k != "hidden_size"}, {"peer_id": "p"}):
        with pytest.raises(ValueError):
            Announcement.from_payload(bad)


def test_hop_cost_prefers_fewer_hops():
    servers = [srv("a", 0, 4, tput=1000.0), srv("b", 4, 8, tput=1000.0), srv("full", 0, 8, tput=100.0)]
    pings = {"a": 0.001, "b": 0.001, "full": 0.005}
    assert len(find_route(servers, 0, 8, pings=pings, hop_cost=0.0)) == 2
    assert find_route(servers, 0, 8, pings=pings, hop_cost=1.0) == [Span("full", 0, 8)]
