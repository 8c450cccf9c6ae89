"""KV cache accounting under a token budget.

One "token" is the K and V of one position of one sequence over all served blocks.
Sessions are charged for the positions they actually hold, as they grow (not their
max_length up front, unlike Petals); a step that would exceed the budget is refused
with `busy`. Rolling back (a step from an earlier position) releases tokens.
Thread-safe: the event loop admits sessions, the compute thread charges growth.
"""

from __future__ import annotations

import threading


class CacheFull(Exception):
    """The budget cannot admit the requested tokens (protocol error type `busy`)."""


class CacheBudget:
    def __init__(self, total_tokens: int):
        if total_tokens <= 0:
            raise ValueError("cache budget must be positive")
        self.total_tokens = int(total_tokens)
        self._used: dict[str, int] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_bytes(cls, budget_bytes: int, bytes_per_token: int) -> CacheBudget:
        return cls(max(1, budget_bytes // max(1, bytes_per_token)))

    @property
    def used_tokens(self) -> int:
        with self._lock:
            return sum(self._used.values())

    @property
    def free_tokens(self) -> int:
        return self.total_tokens - self.used_tokens

    @property
    def sessions(self) -> int:
        with self._lock:
            return len(self._used)

    def open(self, session_id: str, batch_size: int, max_length: int) -> None:
        """Admit a session: it must be able to ever fit, and at least one position must fit now."""
        need_max = batch_size * max_length
        with self._lock:
            if session_id in self._used:
                raise ValueError(f"session {session_id} already open")
            if need_max > self.total_tokens:
                raise CacheFull(f"batch_size*max_length={need_max} exceeds this hoster's whole cache "
                                f"({self.total_tokens} tokens)")
            free = self.total_tokens - sum(self._used.values())
            if batch_size > free:
                raise CacheFull(f"cache full: {free} of {self.total_tokens} tokens free")
            self._used[session_id] = 0

    def resize(self, session_id: str, tokens: int) -> None:
        """Set the session's charge to `tokens` (grow or shrink); CacheFull if growth does not fit."""
        with self._lock:
            current = self._used[session_id]
            if tokens > current:
                free = self.total_tokens - sum(self._used.values())
                if tokens - current > free:
                    raise CacheFull(f"cache full: session needs {tokens - current} more tokens, {free} free")
            self._used[session_id] = tokens

    def usage(self, session_id: str) -> int:
        with self._lock:
            return self._used.get(session_id, 0)

    def close(self, session_id: str) -> None:
        with self._lock:
            self._used.pop(session_id, None)
