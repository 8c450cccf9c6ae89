"""benchmarks.stream_window sends through the delay proxy: every acknowledged message costs a round trip."""

from __future__ import annotations

import asyncio

from benchmarks.stream_window import measure


def test_every_mode_is_timed_through_the_delayed_link() -> None:
    samples = asyncio.run(measure(delay_ms=10.0, size=64 * 1024, passes=1))
    assert set(samples) == {"one byte", "fresh stream", "reused stream"}
    for mode, values in samples.items():
        assert len(values) == 1 and values[0] >= 0.020, (mode, values)  # out and back: 2 x 10 ms at least
