"""Choose which hosters serve which blocks for a session.

`find_route` is a pure function (a shortest path over block boundaries) so it is tested with
plain values; `BanList` remembers failing hosters with exponential backoff; `RouteStats` keeps
measured pings and the number of sessions this client has open per hoster, so concurrent
sessions spread out instead of piling onto the single fastest hoster.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from subnet.swarm.announcements import MIN_THROUGHPUT, Announcement

DEFAULT_PING = 0.05  # seconds assumed for a hoster not measured yet
MAX_CLAIM_RATIO = 4.0  # a claimed throughput counts for at most this many times the median claim
RELAY_PENALTY = 0.1  # seconds added per hop through a relayed (NAT) hoster: a relay adds two links


class RouteError(RuntimeError):
    """The model cannot be covered by the reachable, non-banned hosters."""


@dataclass(frozen=True)
class Span:
    """One hop of a route: `peer_id` runs blocks `[start, end)`."""

    peer_id: str
    start: int
    end: int
    precision: str = ""  # the hoster's consensus.precision class (set by subnet.client.precision)


def find_route(
    servers: Iterable[Announcement],
    start: int,
    end: int,
    *,
    pings: Mapping[str, float] | None = None,
    load: Mapping[str, int] | None = None,
    exclude: Iterable[str] = (),
    cache_tokens_needed: int = 0,
    no_cache_penalty: float = 10.0,
    load_penalty: float = 0.5,
    hop_cost: float = 1e-4,
    jitter: float = 0.0,
    rng: random.Random | None = None,
    step_times: Mapping[str, float] | None = None,
    max_claim_ratio: float = MAX_CLAIM_RATIO,
    relay_penalty: float = RELAY_PENALTY,
) -> list[Span]:
    """Cheapest chain of spans covering blocks `[start, end)`.

    Per-block compute is what this client measured (`step_times`: seconds per decode step on that
    hoster, spread over its announced span, less its ping) where known; otherwise the hoster's
    claimed throughput, capped at `max_claim_ratio` x the median claim of the candidates, so a
    hoster cannot buy traffic by announcing a huge number (it gets measured on first use).
    Cost of a hop = ping + blocks * per-block compute, scaled by `1 + load_penalty * sessions`
    this client already runs there, plus `no_cache_penalty` seconds when the hoster announced
    less free cache than the session needs. A hoster may serve any contiguous sub-range of
    what it announced, so a failed span can be split across several others. A hoster announced as
    `relayed` (behind NAT, reached through a relay) costs `relay_penalty` more per hop: direct first.
    Raises RouteError naming the first block nobody can serve.
    """
    if start >= end:
        return []
    pings = pings or {}
    load = load or {}
    excluded = set(exclude)
    rng = rng or random
    candidates = [s for s in servers
                  if s.state == "online" and s.peer_id not in excluded and s.start < end and s.end > start]

    # Dijkstra over block boundaries start..end; an edge (a -> b via server s) for a in [s.start, s.end).
    best: dict[int, float] = {start: 0.0}
    prev: dict[int, Span] = {}
    heap: list[tuple[float, int]] = [(0.0, start)]
    edges: list[tuple[Announcement, float, float]] = []  # (server, fixed cost per hop, cost per block)
    step_times = step_times or {}
    claims = sorted(s.throughput for s in candidates)
    claim_cap = max(claims[(len(claims) - 1) // 2], MIN_THROUGHPUT) * max_claim_ratio if claims else math.inf
    for s in candidates:
        ping = pings.get(s.peer_id, DEFAULT_PING)
        measured = step_times.get(s.peer_id)
        if measured is not None:
            block_time = max(measured - ping, 0.0) / (s.end - s.start)
        else:
            block_time = 1.0 / (max(min(s.throughput, claim_cap), MIN_THROUGHPUT) * (s.end - s.start))
        penalty = no_cache_penalty if cache_tokens_needed and s.cache_tokens_free < cache_tokens_needed else 0.0
        scale = (1.0 + load_penalty * load.get(s.peer_id, 0)) * (1.0 + jitter * rng.random())
        penalty += relay_penalty if s.relayed else 0.0
        edges.append((s, ping * scale + penalty + hop_cost, block_time * scale))
    while heap:
        cost, pos = heapq.heappop(heap)
        if pos == end:
            break
        if cost > best.get(pos, math.inf):
            continue
        for s, fixed, per_block in edges:
            if not s.start <= pos < s.end:
                continue
            stop = min(s.end, end)
            # Going to the span's own end is never worse than stopping early and paying another hop,
            # but stopping early can let a faster hoster take over: allow every boundary.
            for b in range(pos + 1, stop + 1):
                c = cost + fixed + per_block * (b - pos)
                if c < best.get(b, math.inf) - 1e-12:
                    best[b] = c
                    prev[b] = Span(s.peer_id, pos, b)
                    heapq.heappush(heap, (c, b))
    if end not in best:
        covered = set()
        for s in candidates:
            covered.update(range(max(s.start, start), min(s.end, end)))
        missing = next((i for i in range(start, end) if i not in covered), start)
        raise RouteError(f"no reachable hoster serves block {missing} (need blocks [{start}, {end}))")
    route: list[Span] = []
    pos = end
    while pos != start:
        span = prev[pos]
        route.append(span)
        pos = span.start
    route.reverse()
    return _merge_adjacent(route)


def has_adapter(server: Announcement, adapter: str | None) -> bool:
    """Whether `server` can run a session with LoRA `adapter` (None: the base model, every hoster)."""
    return adapter is None or adapter in server.adapters


def _merge_adjacent(route: list[Span]) -> list[Span]:
    """Consecutive hops on the same hoster become one span (one round trip instead of two)."""
    merged: list[Span] = []
    for span in route:
        if merged and merged[-1].peer_id == span.peer_id and merged[-1].end == span.start:
            merged[-1] = Span(span.peer_id, merged[-1].start, span.end)
        else:
            merged.append(span)
    return merged


class BanList:
    """Temporarily exclude hosters that failed; each consecutive failure doubles the ban."""

    def __init__(self, base: float = 2.0, maximum: float = 300.0, clock: Callable[[], float] = time.monotonic):
        self.base = base
        self.maximum = maximum
        self._clock = clock
        self._failures: dict[str, int] = {}
        self._until: dict[str, float] = {}

    def ban(self, peer_id: str) -> float:
        """Record a failure; returns the ban duration in seconds."""
        n = self._failures.get(peer_id, 0) + 1
        self._failures[peer_id] = n
        duration = min(self.base * 2 ** (n - 1), self.maximum)
        self._until[peer_id] = self._clock() + duration
        return duration

    def success(self, peer_id: str) -> None:
        """A hoster worked again: forget its failures."""
        self._failures.pop(peer_id, None)
        self._until.pop(peer_id, None)

    def is_banned(self, peer_id: str) -> bool:
        until = self._until.get(peer_id)
        return until is not None and self._clock() < until

    def banned(self) -> set[str]:
        now = self._clock()
        return {p for p, t in self._until.items() if now < t}


class RouteStats:
    """Measured pings (exponential moving average) and open sessions per hoster."""

    def __init__(self, alpha: float = 0.3):
        self.alpha = alpha
        self.pings: dict[str, float] = {}
        self.load: dict[str, int] = {}

    def record_ping(self, peer_id: str, seconds: float) -> None:
        old = self.pings.get(peer_id)
        self.pings[peer_id] = seconds if old is None else (1 - self.alpha) * old + self.alpha * seconds

    def acquire(self, spans: Iterable[Span]) -> None:
        for s in spans:
            self.load[s.peer_id] = self.load.get(s.peer_id, 0) + 1

    def release(self, spans: Iterable[Span]) -> None:
        for s in spans:
            n = self.load.get(s.peer_id, 0) - 1
            if n > 0:
                self.load[s.peer_id] = n
            else:
                self.load.pop(s.peer_id, None)
