"""One substrate-interface websocket with the backend's retry policy.

Reads are retried (with a reconnect) on transient websocket errors only. A write is sent
once: a resend after a dropped connection could execute twice.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import websocket  # websocket-client, substrate-interface's transport
from substrateinterface import SubstrateInterface
from substrateinterface.exceptions import SubstrateRequestException

from chain.types import ChainError, error_for

log = logging.getLogger("mesh_node.chain.hypertensor")
T = TypeVar("T")
PALLET = "Network"


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, (ConnectionError, TimeoutError, BrokenPipeError, websocket.WebSocketException))


def map_request_error(e: SubstrateRequestException, what: str) -> ChainError:
    msg = str(e)
    if "pay some fees" in msg or "balance too low" in msg.lower():
        return error_for("InsufficientBalance", f"{what}: {msg}")
    return error_for("ChainRejected", f"{what}: {msg}")


class SubstrateConnection:
    """Lazily opened, reset on transient errors; one lock serialises the websocket."""

    def __init__(self, url: str, retries: int = 3):
        self.url = url
        self.retries = retries
        self._lock = threading.RLock()
        self._substrate: SubstrateInterface | None = None

    def _connect(self) -> SubstrateInterface:
        if self._substrate is None:
            self._substrate = SubstrateInterface(url=self.url, ss58_format=42)
        return self._substrate

    def reset(self) -> None:
        with self._lock:
            if self._substrate is not None:
                try:
                    self._substrate.close()
                except Exception:  # already broken
                    pass
            self._substrate = None

    @contextlib.contextmanager
    def session(self) -> Iterator[SubstrateInterface]:
        """The connection, held exclusively (no retry: for a write and its receipt)."""
        with self._lock:
            yield self._connect()

    def retry(self, op: Callable[[SubstrateInterface], T], what: str) -> T:
        """Run `op`, reconnecting and retrying with backoff on transient errors only."""
        delay = 0.2
        for attempt in range(self.retries + 1):
            with self._lock:
                try:
                    return op(self._connect())
                except ChainError:
                    raise
                except SubstrateRequestException as e:
                    raise map_request_error(e, what) from None
                except Exception as e:
                    if not is_transient(e):
                        raise
                    self.reset()
                    if attempt == self.retries:
                        raise error_for("Unavailable", f"{what}: {self.url}: {type(e).__name__}: {e}") from None
                    log.warning("transient chain error (%s), retrying %s", type(e).__name__, what)
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def query(self, storage: str, params: list | None = None, module: str = PALLET) -> Any:
        def op(s: SubstrateInterface) -> Any:
            res = s.query(module, storage, params or [])
            return None if res is None else res.value

        return self.retry(op, f"read {module}.{storage}")

    def constant(self, name: str, module: str = PALLET) -> Any:
        return self.retry(lambda s: s.get_constant(module, name).value, f"constant {module}.{name}")

    def submit(self, s: SubstrateInterface, extrinsic: Any, what: str) -> Any:
        """Send once inside `session()` and wait for inclusion; never re-sent."""
        try:
            return s.submit_extrinsic(extrinsic, wait_for_inclusion=True)
        except SubstrateRequestException as e:
            raise map_request_error(e, what) from None
        except Exception as e:
            if is_transient(e):
                self.reset()
                raise error_for("Unavailable", f"{what} submitted but the connection dropped: {e}") from None
            raise

    def close(self) -> None:
        self.reset()
