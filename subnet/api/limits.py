"""Admission control for generation requests: a bounded number run at once, the rest get 429."""

from __future__ import annotations


class Lease:
    """One admitted request; `release()` is idempotent so every exit path may call it."""

    def __init__(self, limiter: StreamLimiter):
        self._limiter = limiter
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._limiter.active -= 1
            self._limiter.on_change(self._limiter.active)


class StreamLimiter:
    def __init__(self, limit: int, on_change=lambda active: None):
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self.active = 0
        self.on_change = on_change

    def try_acquire(self) -> Lease | None:
        """A lease, or None when `limit` requests are already running (the caller answers 429)."""
        if self.active >= self.limit:
            return None
        self.active += 1
        self.on_change(self.active)
        return Lease(self)
