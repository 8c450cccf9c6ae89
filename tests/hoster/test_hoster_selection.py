"""Block choice from coverage, and hysteresis for moves (pure)."""

from __future__ import annotations

from hoster.selection import Span, choose_blocks, coverage, should_move


def test_empty_swarm_starts_at_zero():
    assert choose_blocks(8, 3, []) == (0, 3)


def test_fills_the_gap():
    others = [Span(0, 4, 10.0), Span(6, 8, 10.0)]
    assert choose_blocks(8, 2, others) == (4, 6)
    assert choose_blocks(8, 4, others) in {(3, 7), (2, 6), (4, 8)}
    start, end = choose_blocks(8, 4, others)
    assert start <= 4 and end >= 6  # covers both uncovered blocks


def test_prefers_weakest_covered():
    others = [Span(0, 8, 1.0), Span(0, 4, 5.0)]
    assert choose_blocks(8, 4, others) == (4, 8)


def test_coverage_sums_throughput():
    assert coverage(4, [Span(0, 2, 1.5), Span(1, 4, 2.0)]) == [1.5, 3.5, 2.0, 2.0]


def test_hysteresis():
    # staying keeps every block covered twice; moving cannot help: no move
    others = [Span(0, 8, 1.0)]
    assert should_move(8, (0, 4), others) is None
    # a hole opened at [4, 8): move there
    others = [Span(0, 4, 1.0)]
    assert should_move(8, (0, 4), others) == (4, 8)
    # a small imbalance is not worth a move
    others = [Span(0, 4, 1.0), Span(4, 8, 1.1)]
    assert should_move(8, (4, 8), others, throughput=1.0, hysteresis=0.25) is None
