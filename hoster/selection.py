"""Choose which blocks to serve from the swarm's current coverage (pure functions).

Coverage of a block = summed announced throughput of the hosters serving it. A new
hoster takes the window of `k` blocks that maximizes the swarm's weakest coverage
after it joins (ties: the window whose existing coverage is smallest, then lowest
start). A running hoster moves only if moving raises the weakest coverage by more
than a relative `hysteresis` margin, so hosters do not oscillate.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    throughput: float = 1.0
    peer_id: str = ""


def coverage(num_blocks: int, spans: Iterable[Span]) -> list[float]:
    cov = [0.0] * num_blocks
    for s in spans:
        for i in range(max(0, s.start), min(num_blocks, s.end)):
            cov[i] += max(0.0, s.throughput)
    return cov


def _score(cov: Sequence[float], start: int, k: int, throughput: float) -> tuple[float, float]:
    new = list(cov)
    for i in range(start, start + k):
        new[i] += throughput
    return (min(new), -sum(cov[start:start + k]))


def choose_blocks(num_blocks: int, k: int, others: Iterable[Span], throughput: float = 1.0) -> tuple[int, int]:
    """The window [start, start+k) that most improves the weakest coverage."""
    if not 1 <= k <= num_blocks:
        raise ValueError(f"cannot serve {k} of {num_blocks} blocks")
    cov = coverage(num_blocks, others)
    best = max(range(num_blocks - k + 1), key=lambda s: (_score(cov, s, k, throughput), -s))
    return best, best + k


def should_move(num_blocks: int, current: tuple[int, int], others: Iterable[Span], throughput: float = 1.0,
                hysteresis: float = 0.25) -> tuple[int, int] | None:
    """The better window if moving there beats staying by the margin, else None.

    `others` must not include this hoster. Staying vs. moving is compared on the weakest
    coverage of the whole swarm; a move must improve it by more than `hysteresis`
    (relative to the coverage when staying, and at least a strictly positive amount).
    """
    others = list(others)
    k = current[1] - current[0]
    cov = coverage(num_blocks, others)
    stay = _score(cov, current[0], k, throughput)[0]
    start, end = choose_blocks(num_blocks, k, others, throughput)
    if (start, end) == tuple(current):
        return None
    moved = _score(cov, start, k, throughput)[0]
    if moved > stay * (1.0 + hysteresis) and moved - stay > 1e-9:
        return start, end
    return None
