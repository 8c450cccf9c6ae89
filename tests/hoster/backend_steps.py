"""Test-side helpers for driving a `hoster.backend.Backend` directly (no servicer, no network)."""

from __future__ import annotations

import concurrent.futures

import torch

from hoster.backend import Backend, _Task


def step(backend: Backend, session, hidden: torch.Tensor, position: int) -> torch.Tensor:
    """One step on the backend's compute thread, as the servicer runs it."""
    task = _Task(concurrent.futures.Future(), hidden, session.start, session.end, session, position)
    backend._queue.put(task)
    return task.future.result(timeout=60)


def seeded(*shape: int, seed: int) -> torch.Tensor:
    """A reproducible random hidden-state tensor."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
