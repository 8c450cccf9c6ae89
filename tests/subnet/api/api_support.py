"""Helpers shared by the API tests (a module with a unique name: no clash with other test dirs)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

MODEL = "tiny-llama"


@contextmanager
def live_server(app) -> Iterator[str]:
    """A real uvicorn server on 127.0.0.1 (ephemeral port) for the duration of the block."""
    from subnet.api.server import BackgroundServer

    with BackgroundServer(app) as server:
        yield server.url


class Proposer:
    """Plays a live subnet's validators on a `LiveSubnet`: every epoch the elected node proposes
    the subnet's scores and the others attest, so epochs are accepted and rewards paid.

    Without it the fixture's chain keeps running epochs nobody proposes in, the nodes' reputations
    fall and the chain removes them: a test's view then depends on how long ago the fixture
    started. With `omit_first`, proposals leave out one node (`victim`) until an epoch with the
    omission is accepted (`omitted_epoch`), so the chain records one "missing_from_scores" reputation
    cut. On a loaded machine a proposal or an attestation can miss its window: the omission is then
    proposed again in a later epoch, never twice in accepted epochs.
    """

    def __init__(self, subnet, omit_first: bool = False):
        from chain.types import UNIT

        self.subnet, self.sid = subnet, subnet.subnet_id
        owner = subnet.chains[1]
        self.owner = owner
        self.ops = {owner.get_node_by_hotkey(self.sid, c.hotkey.address).node_id: c for c in subnet.chains[2:5]}
        self.scores = {nid: (i + 2) * UNIT // 5 for i, nid in enumerate(sorted(self.ops))}
        self.omit_first = omit_first
        self.victim: int | None = None
        self.omitted_epoch: int | None = None  # the accepted epoch whose scores left out the victim
        self._omitting: int | None = None  # the epoch proposed without the victim, not yet settled
        self.cut: tuple[float, float] = (1.0, 0.75)  # reputation before/after the omission (set from the chain)
        self.accepted: set[int] = set()  # epochs whose proposal went out and was attested
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from chain.types import ChainError, ScoreEntry

        done: set[int] = set()
        while not self.stop.wait(0.05):
            try:
                e = self.owner.get_epoch_info().epoch
                if e in done:
                    continue
                done.add(e)
                if self._omitting is not None and not self._omission_settled():
                    done.discard(e)  # its outcome is not on chain yet: ask again before proposing
                    continue
                elected = self.owner.get_elected_validator(self.sid, e)
                if elected not in self.ops:
                    continue
                scores = dict(self.scores)
                omit = self.omit_first and self.omitted_epoch is None
                if omit:
                    if self.victim is None:
                        self.victim = next(n for n in sorted(self.ops) if n != elected)
                    del scores[self.victim]
                    self._omitting = e  # before proposing: a failed call may still have reached the chain
                self.ops[elected].propose_attestation(self.sid, [ScoreEntry(n, s) for n, s in sorted(scores.items())])
                for nid, c in self.ops.items():
                    if nid != elected:
                        c.attest(self.sid)
                self.accepted.add(e)
            except ChainError:
                continue

    def _omission_settled(self) -> bool:
        """Whether the epoch proposed without the victim has an outcome; if it was accepted, it is
        `omitted_epoch`, else the omission is proposed again."""
        result = self.owner.get_epoch_result(self.sid, self._omitting)
        if result is None or not result.get("outcome"):
            return False
        if result["outcome"] == "accepted":
            self.omitted_epoch = self._omitting
        self._omitting = None
        return True

    def wait_accepted(self, n: int = 1, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.accepted) < n:
            assert time.monotonic() < deadline, f"no {n} proposed and attested epochs in {timeout} s"
            time.sleep(0.1)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
