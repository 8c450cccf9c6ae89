"""Publish this hoster's signed announcement, refresh it, withdraw it on shutdown.

The schema and the verifying reader live in `subnet.swarm.announcements`, so clients use
them without importing the hoster.
hivemind keeps, per subkey, the value with the LATEST expiration: a withdrawal must
therefore expire later than the last refresh, so it is written as state "offline"
with expiration `last + 1 s`, and readers drop offline records. Every record carries `seq`
(issue time in ns, strictly increasing) and `valid_until` (the expiration it is stored with),
so DHT peers refuse it when replayed with a later expiration (`AnnouncementValidator`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import hivemind
from hivemind.utils import get_dht_time

from hoster.options import HosterOptions
from keys.node_key import NodeKey
from subnet.logs import event
from subnet.swarm.announcements import servers_key
from subnet.swarm.records import seal

log = logging.getLogger(__name__)

STORE_TIMEOUT = 15.0  # seconds to wait for the DHT to store an announcement


class DHTGone(RuntimeError):
    """The node's DHT process has exited: nothing can be stored any more."""


class Announcer:
    """A background thread that stores `payload()` under the model's servers key every `period` s."""

    def __init__(self, dht: hivemind.DHT, key: NodeKey, model_uid: str, payload: Callable[[], dict], *,
                 ttl: float = HosterOptions.announce_ttl, period: float = HosterOptions.announce_period):
        self.dht, self.key, self.model_uid, self.payload = dht, key, model_uid, payload
        self.ttl, self.period = ttl, period
        self.last_expiration = 0.0
        self.last_seq = 0
        self.stored = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def publish(self, state: str | None = None, ttl: float | None = None) -> bool:
        """Store the current payload now (optionally overriding `state`); True if the DHT accepted it."""
        payload = dict(self.payload())
        if state is not None:
            payload["state"] = state
        with self._lock:
            expiration = max(get_dht_time() + (self.ttl if ttl is None else ttl), self.last_expiration + 1.0)
            # replay protection: a strictly increasing issue time and the expiration we sign for
            self.last_seq = max(time.time_ns(), self.last_seq + 1)
            payload["seq"], payload["valid_until"] = self.last_seq, expiration
            # Bounded wait: a dead DHT process would otherwise block shutdown forever.
            future = self.dht.store(servers_key(self.model_uid), seal(self.key, "announce", payload),
                                    expiration_time=expiration, subkey=self.key.peer_id, return_future=True)
            ok = bool(self._result(future))
            if ok:
                self.last_expiration = expiration
                self.stored += 1
        if not ok:
            event(log, "announce_not_stored", level=logging.WARNING, state=payload.get("state"))
        return ok

    def _result(self, future) -> object:
        """The store's result within STORE_TIMEOUT, or DHTGone as soon as the DHT process has died (a
        signal to the node's whole process group kills it first: waiting out the timeout then only
        delays the node's exit by 15 s)."""
        deadline = time.monotonic() + STORE_TIMEOUT
        while True:
            try:
                return future.result(timeout=min(0.2, max(0.0, deadline - time.monotonic())))
            except TimeoutError:  # concurrent.futures.TimeoutError is this one since 3.11
                if not self.dht.is_alive():
                    raise DHTGone("the DHT process has exited") from None
                if time.monotonic() >= deadline:
                    raise

    def start(self) -> None:
        self.publish()
        event(log, "announced", model=self.model_uid, blocks=f"{self.payload()['start']}:{self.payload()['end']}")
        self._thread = threading.Thread(target=self._run, name="hoster-announce", daemon=True)
        self._thread.start()

    def refresh_now(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.period)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.publish()
            except Exception as e:  # DHT hiccup: try again next period
                event(log, "announce_failed", level=logging.WARNING, error=repr(e))

    def withdraw(self) -> None:
        """Stop refreshing and overwrite the record with state "offline" (readers drop it)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.publish(state="offline", ttl=5.0)
            event(log, "announcement_withdrawn", model=self.model_uid)
        except DHTGone:
            event(log, "withdraw_skipped", level=logging.WARNING, reason="dht_process_gone",
                  expires_in=round(max(0.0, self.last_expiration - get_dht_time()), 1))
        except Exception as e:
            event(log, "withdraw_failed", level=logging.WARNING, error=repr(e))
