"""Routes stay in one precision class: the best that covers, pinned for re-routes, above a minimum."""

from __future__ import annotations

import pytest

from subnet.client.precision import route_in_one_class
from subnet.client.routing import RouteError, find_route
from subnet.swarm.announcements import Announcement


def ann(peer: str, start: int, end: int, dtype: str = "float32", quant: str = "none", tps: float = 10.0):
    return Announcement(peer_id=peer, model="m", start=start, end=end, num_blocks=8, hidden_size=64, dtype=dtype,
                        quant=quant, throughput=tps, cache_tokens_free=1000, cache_tokens_total=1000)


def route(servers, start=0, end=8, **kw):
    return route_in_one_class(servers, lambda group: find_route(group, start, end), **kw)


# a fast int8 pair covering everything, a slower float32 pair covering everything, an nf4 half
SWARM = [ann("i1", 0, 4, quant="int8", tps=100), ann("i2", 4, 8, quant="int8", tps=100),
         ann("f1", 0, 4, tps=1), ann("f2", 4, 8, tps=1), ann("n1", 0, 8, quant="nf4", tps=1000)]


def test_most_precise_class_that_covers_wins_over_speed():
    r = route(SWARM)
    assert [s.peer_id for s in r] == ["f1", "f2"] and {s.precision for s in r} == {"float32"}


def test_never_mixes_classes_without_permission():
    # float32 covers only 0:4, int8 only 4:8: no single class covers -> error, not a mixed route
    servers = [ann("f1", 0, 4), ann("i2", 4, 8, quant="int8")]
    with pytest.raises(RouteError):
        route(servers)
    mixed = route(servers, mix=True)
    assert [(s.peer_id, s.precision) for s in mixed] == [("f1", "float32"), ("i2", "int8")]


def test_pinned_class_for_a_sessions_reroute():
    r = route(SWARM, start=4, end=8, pinned="int8")
    assert [(s.peer_id, s.precision) for s in r] == [("i2", "int8")]
    with pytest.raises(RouteError):
        route([s for s in SWARM if s.peer_id != "i2"], start=4, end=8, pinned="int8")


def test_minimum_precision_drops_lower_classes():
    assert {s.precision for s in route(SWARM, minimum="int8")} == {"float32"}
    only_quantized = [s for s in SWARM if s.quant != "none"]
    assert [s.peer_id for s in route(only_quantized)] == ["i1", "i2"]
    assert [s.peer_id for s in route(only_quantized, minimum="nf4")] == ["i1", "i2"]
    with pytest.raises(RouteError, match="no hoster of precision bfloat16 or better"):
        route(only_quantized, minimum="bfloat16")


def test_unknown_announced_quantization_is_rejected_by_the_parser():
    payload = ann("x", 0, 8).to_payload()
    payload["quant"] = "int3"
    with pytest.raises(ValueError, match="quantization"):
        Announcement.from_payload(payload)
    del payload["quant"]
    assert Announcement.from_payload(payload).quant == "none"  # an older hoster's announcement
