"""Per-step deadlines from each hoster's measured step time (fast detection of a stalled hoster).

A step that takes far longer than the hoster's usual steps is probably not coming: the hoster
froze, its machine is gone without closing the connection, or it lost the step. Waiting for
`ClientConfig.request_timeout` (the outer bound, 30 s) would freeze the stream that long, so a
step gets a deadline of `max(floor, factor x EWMA of the hoster's step time)`, both scaled by
the number of positions sent (a prefill or a history replay takes longer than a decode step).
A hoster never measured yet gets `first_step` seconds (also scaled), at most the outer bound.

What happens at the deadline (a liveness probe, then failover) is up to the caller; see
`InferenceStream.receive_step` and `InferenceSession`.
"""

from __future__ import annotations

POSITIONS_PER_UNIT = 64  # a step of n positions is allowed (1 + n / 64) times a decode step's time


def size_scale(positions: int) -> float:
    return 1.0 + positions / POSITIONS_PER_UNIT


class StepTimes:
    """EWMA of each hoster's step time (per size unit), and the deadlines derived from it."""

    def __init__(self, floor: float, factor: float, first_step: float, alpha: float = 0.3):
        self.floor, self.factor, self.first_step, self.alpha = floor, factor, first_step, alpha
        self._unit: dict[str, float] = {}  # peer id -> EWMA seconds per size unit

    @property
    def enabled(self) -> bool:
        return self.floor > 0

    def record(self, peer_id: str, positions: int, seconds: float) -> None:
        unit = max(0.0, seconds) / size_scale(positions)
        old = self._unit.get(peer_id)
        self._unit[peer_id] = unit if old is None else old + self.alpha * (unit - old)

    def estimate(self, peer_id: str) -> float | None:
        """Seconds per size unit (about one decode step), or None before the first measurement."""
        return self._unit.get(peer_id)

    def forget(self, peer_id: str) -> None:
        self._unit.pop(peer_id, None)

    def deadline(self, peer_id: str, positions: int, outer: float) -> float | None:
        """Seconds to wait for a step of `positions` positions on this hoster (None: only `outer` applies)."""
        if not self.enabled:
            return None
        unit = self._unit.get(peer_id)
        base = self.first_step if unit is None else max(self.floor, self.factor * unit)
        d = base * size_scale(positions)
        return d if d < outer else None
