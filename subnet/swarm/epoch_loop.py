"""The background loop shared by the hoster and validator duties.

Each duty is a small state machine driven by chain progress: `tick(view)` runs a few times
per block; chain or DHT outages are logged and retried, and no exception ends the loop, so
a duty never takes the node (or its inference serving) down with it.
"""

from __future__ import annotations

import logging
import threading

from chain.types import ChainError
from subnet.logs import event
from subnet.swarm.chain_view import EpochPosition
from subnet.swarm.record_store import DHTUnavailableError


class EpochDutyLoop:
    """Base for duties: subclasses set `name`, `policy`, `poll_interval`, `epochs`, and define `tick`."""

    name = "duty"
    policy: object
    poll_interval: float | None
    epochs: dict

    def _init_loop(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._log = logging.getLogger(type(self).__module__)

    def start(self):
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def reports(self) -> dict[int, dict]:
        return {e: st.report() for e, st in sorted(self.epochs.items())}

    def tick(self, view: EpochPosition) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        snake = self.name.replace("-", "_")
        while not self._stop.is_set():
            interval = 0.2
            try:
                view = self.policy.registry.view()
                interval = self.poll_interval or max(0.05, min(0.5, view.block_time / 3))
                self.tick(view)
            except (ChainError, DHTUnavailableError) as e:
                event(self._log, f"{snake}_chain_error", logging.WARNING, error=str(e)[:200])
            except Exception as e:  # a bad record or a bug in one step must not kill the duty
                self._log.exception("%s tick failed: %s", self.name, e)
            self._stop.wait(interval)
