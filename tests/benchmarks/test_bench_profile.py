"""The decode-step split of benchmarks.profile_chain adds up to the measured per-token time."""

from __future__ import annotations

import pytest

from benchmarks.profile_chain import breakdown


def _hoster(step: float, span: float, push: float) -> dict:
    return {"step": step, "span": span, "span_ops": 0.0, "span_inner": 0.0, "receipt": 0.0002, "push": push,
            "encode": 0.0001, "decode": 0.0001, "encode_in_push": 0.0001 if push else 0.0, "steps": 10}


def test_parts_add_up_to_the_token_time_and_ops_follow_the_profiled_share() -> None:
    timed = {"per_token": 0.040, "client_wait": 0.030, "client_head": 0.006, "client_embed": 0.0001,
             "client_encode": 0.0001, "client_decode": 0.0002, "client_decode_in_wait": 0.0002,
             "hosters": {"1": _hoster(0.008, 0.007, 0.0005), "2": _hoster(0.009, 0.008, 0.0)}}
    profiled = {"client_head_ops": 0.009, "client_embed_ops": 0.0, "client_head_inner": 0.010,
                "client_embed_inner": 0.0,
                "hosters": {"1": {**_hoster(0.01, 0.01, 0.0), "span_ops": 0.006, "span_inner": 0.012},
                            "2": {**_hoster(0.01, 0.01, 0.0), "span_ops": 0.009, "span_inner": 0.010}}}
    parts = breakdown(timed, profiled)
    assert sum(parts.values()) == pytest.approx(40.0)
    assert parts["compute: hoster ops (blocks)"] == pytest.approx(7 * 0.5 + 8 * 0.9)  # ms: timed wall x op share
    assert parts["compute: client ops (embed, norm, LM head)"] == pytest.approx(6.1 * 0.9)
    assert parts["Python+threads: hoster step outside blocks (hand-off, queue, KV)"] == pytest.approx(2.0)
    assert parts["network: push send (minus its encode)"] == pytest.approx(0.4)
