"""The token loop's view of a session's pending checks: hold tokens back, rewind on a failed check.

Client-side checks (`subnet/client/verification.py`) run beside the token loop so that they
cost no latency per token. A token sampled from a step whose check is still pending is
therefore not yet known to be right. `generate_events` (`subnet/client/generation.py`) asks
this gate after every step:
- a check is pending on a step at or before this one: the step's events are held back (not
  given to the consumer) together with a checkpoint of the loop (sampler, detokenizers, input);
- every pending check passed: the held events are released in order;
- a check failed: the liar is already dropped from the session; the loop restores the
  checkpoint of the failed step, discards the held events from there, and regenerates from
  the last verified token over the new route.

The trade-off: a consumer never sees a token sampled from a step a check found wrong, at the
price of delayed events while a check is pending (about one recomputation of the span's
prefix on another hoster; first-step checks of each hoster delay the first tokens the same
way) and, at the end of a generation, waiting for the last pending checks. Steps that are not
checked are released at once (a fraction `verify_fraction` of steps is checked).
"""

from __future__ import annotations

from subnet.client.verification import StepVerifier

SETTLE_TIMEOUT = 600.0  # bound on waiting for pending checks (each is bounded by request timeouts)


class SessionGate:
    """Thread-side handle of a session's `StepVerifier` for the token loop (see the module doc)."""

    def __init__(self, runtime, verifier: StepVerifier):
        self.runtime, self.verifier = runtime, verifier
        verifier.holding = True  # first-step checks stop blocking: this loop holds their tokens instead

    def state(self) -> tuple[int | None, int | None]:
        """(position to rewind to, oldest position whose check is pending)."""
        return self.verifier.state()

    def rewind(self, position: int) -> None:
        self.verifier.rewind(position)

    def settle(self) -> None:
        """Block until no check is pending."""
        self.runtime.run(self.verifier.settle(), timeout=SETTLE_TIMEOUT)


def hold_gate(remote_session) -> SessionGate | None:
    """A gate for a `RemoteSession` whose checks run in the background; None when there is nothing to hold."""
    verifier = remote_session.session.verifier
    if verifier is None or not verifier.background:
        return None
    return SessionGate(remote_session.runtime, verifier)
