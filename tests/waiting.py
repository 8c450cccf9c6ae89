"""Waiting on conditions, not on time: a loaded machine stretches every step, so tests poll a condition
under a generous deadline instead of sleeping a guess (issue #23)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], what: str = "the condition holds", timeout: float = 60.0,
               interval: float = 0.05) -> T:
    """Poll `condition()` until it returns something truthy (returned), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting until {what}"
        time.sleep(interval)
    return result


async def async_wait_until(condition: Callable[[], T], what: str = "the condition holds", timeout: float = 60.0,
                           interval: float = 0.02) -> T:
    """`wait_until` inside an event loop: the loop keeps running (and serving) between polls."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting until {what}"
        await asyncio.sleep(interval)
    return result
