"""Concurrent sessions on one route send their decode steps together, so every hoster batches them.

Hosters batch the steps that arrive together (hoster.backend: a round waits about one step
for last round's batch mates). Through one hoster that keeps concurrent sessions in one
batch; through a chain it did not: the client's sessions come back from the last hoster
one by one, the client's own per-token work (LM head, sampling, receipts) runs them one
after the other, and their next steps leave milliseconds apart. The first hoster then runs
whoever came, its pushes reach the next hoster in the same groups, and the groups stay apart
at every hop (measured with 8 sessions through 3 hosters of model (a): rounds of 1-8
sessions, a quarter of them single, identical at all three hosters; each hoster spent 3x
the CPU per token of a single hoster).

`SendAligner` is a rendezvous per route (the same hosters and spans). The first session to
step opens a round and waits for every other session active on the route, for at most
`wait(route)` seconds: one step cycle of the route (the time between a session's consecutive
steps), capped by `max_wait`. Sessions come back within one cycle, so two groups that drifted
apart merge in the first round that waits for them. Half a cycle was tried first: on model
(b) (a cycle of ~230 ms, 8 sessions) the sessions split 6 + 2 for good, each group timing out
on the other every round (55, 72, 30 tok/s; the cores 44 % idle); with a whole cycle nearly
every round is 8 (66-67 tok/s). A session that misses a round is not waited for again until it
steps again (a slow consumer costs the others one wait, not one per round); a lone session
never waits; `leave` (session closed or re-routed) forgets a session at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

RouteKey = tuple[tuple[str, int, int], ...]
CYCLE_SHARE = 1.0  # a round waits at most this share of the route's step cycle (see above)
MIN_WAIT = 0.002


@dataclass
class _Round:
    expected: set[int]
    members: list[int]
    go: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Route:
    missed: dict[int, bool] = field(default_factory=dict)  # active session -> missed the last round it was due
    last_step: dict[int, float] = field(default_factory=dict)  # session -> when it last arrived
    cycle: float | None = None  # moving average of the time between a session's steps
    round: _Round | None = None


class SendAligner:
    """Rendezvous of concurrent sessions' decode steps per route (client loop only)."""

    def __init__(self, max_wait: float):
        self.max_wait = max_wait
        self._routes: dict[RouteKey, _Route] = {}
        self.sizes: Counter[int] = Counter()  # rounds released, by sessions in them (observability, tests)

    def wait(self, key: RouteKey) -> float:
        """Longest a round on this route waits for its other sessions (seconds)."""
        route = self._routes.get(key)
        if route is None or route.cycle is None:
            return self.max_wait
        return min(self.max_wait, max(MIN_WAIT, CYCLE_SHARE * route.cycle))

    async def ready(self, key: RouteKey, session: int) -> None:
        """Return when this session's step may go: at once when no other session is active on the
        route, else when they have all arrived or `wait(key)` seconds passed."""
        if self.max_wait <= 0:
            return
        route = self._routes.setdefault(key, _Route())
        now = time.monotonic()
        prev = route.last_step.get(session)
        if prev is not None:
            gap = now - prev
            route.cycle = gap if route.cycle is None else 0.8 * route.cycle + 0.2 * gap
        route.last_step[session] = now
        route.missed[session] = False
        rnd = route.round
        if rnd is not None:  # a round is gathering: join it
            rnd.members.append(session)
            rnd.expected.discard(session)
            if not rnd.expected:
                rnd.go.set()
            await rnd.go.wait()
            return
        expected = {s for s, missed in route.missed.items() if not missed and s != session}
        if not expected:
            self.sizes[1] += 1
            return
        rnd = route.round = _Round(expected, [session])
        try:
            await asyncio.wait_for(rnd.go.wait(), self.wait(key))
        except TimeoutError:
            pass
        finally:
            rnd.go.set()  # members that joined go too
            route.round = None
            for s in rnd.expected:  # late: not waited for again until it steps again
                if s in route.missed:
                    route.missed[s] = True
            self.sizes[len(rnd.members)] += 1

    def leave(self, key: RouteKey, session: int) -> None:
        """A session closed or moved to another route: nobody waits for it here any more."""
        route = self._routes.get(key)
        if route is None:
            return
        route.missed.pop(session, None)
        route.last_step.pop(session, None)
        if route.round is not None:
            route.round.expected.discard(session)
            if not route.round.expected:
                route.round.go.set()
        if not route.missed and route.round is None:
            del self._routes[key]
