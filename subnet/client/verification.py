"""Client-side checks of what hosters return (docs/PROTOCOL.md, "Accountable serving").

Receipts: every inference step answer carries the hoster's signed receipt; the client keeps
its own copy of the span's input chain (`consensus.evidence`), rebuilds the receipt from what
it sent and received, and checks the Ed25519 signature against the hoster's peer id. A
missing or invalid receipt forces a check of that span.

Checks: the first step every hoster serves in a session, and then a random `fraction` of
steps per span, are recomputed elsewhere: the span's whole input prefix (the client keeps
it for failover anyway) goes through `rpc_forward` on a route of *other* hosters covering
the same blocks; outputs must agree within `tolerance`. On a mismatch a third opinion (a
route avoiding both) decides:
- it agrees with the checker: the served hoster lied. It is dropped from the session (and
  banned), evidence (its receipt, the prefix and its signed output) is published, and the
  step is redone over the new route, so the caller gets the right output;
- it agrees with the served hoster: the checker lied; its hosters are dropped for the session;
- a pushed step whose receipt does not match what the client saw: the upstream hoster may have
  pushed something else than it returned; nobody is accused, the session stops pushing and the
  step is redone hop by hop (where inputs come from the client);
- no third route, or three different answers: the dispute cannot be settled by this client;
  it is logged (`verification_disputed`), nobody is accused, and that span stays under check
  at every step until the dispute can be decided.

Background checks and held-back tokens: with `background`, random checks run beside the token
loop. When the token loop holds tokens back (`holding`, set by the generation gate,
`subnet/client/holdback.py`), first-step checks run in the background too: tokens sampled from
a step at or after the oldest pending check are held, a passing check releases them, and a
failing one makes the loop rewind to the checked step (`state`/`rewind`) and regenerate it over
the new route, so a consumer never sees a token produced from a step a check found wrong.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from consensus.evidence import (
    EVIDENCE_TOLERANCE,
    MAX_EVIDENCE_ELEMENTS,
    Evidence,
    EvidenceError,
    Receipt,
    chain_seed,
    chain_state,
    extend_chain,
    output_hash,
    relative_distance,
)
from keys.node_key import public_key_from_peer_id, verify
from subnet.client import transport
from subnet.client.routing import RouteError
from subnet.logs import event

log = logging.getLogger(__name__)

Publisher = Callable[[Evidence], None]
UNVERIFIABLE_RETRY = 10.0  # seconds before a span no other hoster covers is looked at again


@dataclass
class SpanCheck:
    """Per span of a session: the mirrored input chain, the last step's output and receipt."""

    stream: object = None  # the InferenceStream the chain belongs to (a new stream restarts it)
    dtype: torch.dtype | None = None
    chain: bytearray | None = None
    out: torch.Tensor | None = None  # the last answer: positions [out_start, out_start + n)
    out_start: int = 0
    receipt: Receipt | None = None
    receipt_ok: bool = True
    passed: int = 0  # checks this span's hoster passed in this session
    disputed: bool = False
    pushed_suspect: bool = False  # the receipt of a pushed step failed: maybe the pusher's fault
    unverifiable_until: float = 0.0  # no other route covers the span: do not look again before this
    pending: int = 0  # background checks of this span in flight


def mirror_and_verify(check: SpanCheck, stream, peer_id: str, model_uid: str, start: int, end: int,
                      x: torch.Tensor, position: int, out: torch.Tensor, meta: dict) -> None:
    """Extend the mirrored chain with the input sent at `position` and verify the step's receipt."""
    if check.stream is not stream or check.chain is None or position == 0:
        check.stream, check.dtype = stream, x.dtype
        check.chain = bytearray(chain_seed(x.dtype, x.shape[0], x.shape[2]))
    extend_chain(check.chain, x.to(check.dtype), position)
    check.out, check.out_start = out, position
    check.receipt, check.receipt_ok = None, False
    raw = meta.get("receipt")
    try:
        if not isinstance(raw, dict) or set(raw) != {"epoch", "sig"} or not isinstance(raw["sig"], str) \
                or len(raw["sig"]) != 128 or not isinstance(raw["epoch"], int) or not 0 <= raw["epoch"] < 1 << 62:
            raise EvidenceError("missing or malformed receipt")
        n = x.shape[1]
        r = Receipt(peer_id, model_uid, raw["epoch"], start, end, position, n, chain_state(check.chain, position + n),
                    output_hash(out), bytes.fromhex(raw["sig"]))
        if not verify(public_key_from_peer_id(peer_id), r.message(), r.signature):
            raise EvidenceError("bad receipt signature")
        check.receipt, check.receipt_ok = r, True
    except (EvidenceError, ValueError) as e:
        event(log, "receipt_invalid", logging.WARNING, hoster=peer_id[-8:], position=position, error=str(e)[:200])


class StepVerifier:
    """Decides which steps to check and checks them (one per session; runs on the client loop)."""

    def __init__(self, fraction: float, *, tolerance: float = EVIDENCE_TOLERANCE, warmup: bool = True,
                 publish: Publisher | None = None, rng: random.Random | None = None, background: bool = False):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("the verification fraction must be in [0, 1]")
        self.fraction, self.tolerance, self.warmup = fraction, tolerance, warmup
        self.publish = publish
        self.rng = rng or random.Random()
        self.checked = self.mismatches = self.disputes = self.rewinds = 0
        self.background = background
        self.caught: set[str] = set()  # liars found by background checks, dropped before the next step
        self._tasks: set[asyncio.Task] = set()
        # The token loop holds back tokens while checks are pending (`subnet.client.holdback`):
        # then first-step checks run in the background too. Read from the token loop's thread.
        self.holding = False
        self._lock = threading.Lock()
        self._pending: dict[asyncio.Task, int] = {}  # background check -> position of its step
        self._rollback: int | None = None  # a background check failed the step at this position

    def wants(self, check: SpanCheck) -> bool:
        if time.monotonic() < check.unverifiable_until:
            return False
        if check.disputed or not check.receipt_ok:
            return True
        if self.warmup and check.passed == 0 and check.pending == 0:
            return True
        return self.fraction > 0 and self.rng.random() < self.fraction

    def state(self) -> tuple[int | None, int | None]:
        """(position to rewind to, oldest position with a check pending); thread-safe."""
        with self._lock:
            return self._rollback, min(self._pending.values(), default=None)

    def rewind(self, position: int) -> None:
        """The token loop went back to `position`: checks of steps from there on concern a
        discarded branch (they still catch and report liars, but hold and rewind nothing)."""
        with self._lock:
            self._rollback = None
            stale = [task for task, pos in self._pending.items() if pos >= position]
            for task in stale:
                del self._pending[task]
        self.rewinds += 1
        event(log, "generation_rewound", logging.WARNING, position=position, stale_checks=len(stale))

    async def settle(self) -> None:
        """Wait until no background check holds a token back."""
        while True:
            with self._lock:
                tasks = list(self._pending)
            if not tasks:
                return
            await asyncio.wait(tasks)

    async def after_step(self, session, position: int, n: int) -> bool:
        """Check the chosen spans of the step just done; False when the step must be redone.

        First-step checks, spans with a failed receipt and disputed spans are checked before the
        step's output is used (concurrently); with `background`, the random checks run beside the
        token loop instead, and a liar they catch is dropped before the session's next step."""
        spans = list(session.spans)
        if any(st.check.pushed_suspect for st in spans):
            for st in spans:
                st.check.pushed_suspect = False
            return False  # redo hop by hop (push is off now); then receipts are about our inputs
        chosen = [(idx, st) for idx, st in enumerate(spans)
                  if st.check.out is not None and st.check.out_start <= position and self.wants(st.check)]
        blocking = []
        for idx, st in chosen:
            if not self.background or self._must_block(st.check):
                blocking.append((idx, st))
            else:
                self._spawn(session, st.check, _Snapshot.of(st, position, n))
        if not blocking:
            return True
        verdicts = await asyncio.gather(*(self._check(session, st.check, _Snapshot.of(st, position, n))
                                          for _, st in blocking))
        liars = [(idx, st) for (idx, st), verdict in zip(blocking, verdicts) if verdict == "liar"]
        for idx, st in reversed(liars):  # from the right: re-routing a span keeps the indices before it
            await session.drop_span(idx, st.span.peer_id)
        return not liars  # a lying checker is excluded; the served output stands

    def _must_block(self, check: SpanCheck) -> bool:
        return check.disputed or not check.receipt_ok or (self.warmup and check.passed == 0 and not self.holding)

    def _spawn(self, session, check: SpanCheck, snap: _Snapshot) -> None:
        async def run() -> None:
            try:
                verdict = await self._check(session, check, snap)
            finally:
                check.pending -= 1
            with self._lock:
                live = self._pending.pop(task, None) is not None  # not made stale by a rewind
                if verdict == "liar" and live:
                    self._rollback = snap.position if self._rollback is None else min(self._rollback, snap.position)
            if verdict == "liar":
                self.caught.add(snap.peer)  # the session drops it before its next step
                session.manager.report_failure(snap.peer, RuntimeError("failed a client-side check"))

        check.pending += 1
        task = asyncio.ensure_future(run())
        with self._lock:
            self._pending[task] = snap.position
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        with self._lock:
            self._pending.pop(task, None)  # a check that raised holds nothing back
        if not task.cancelled():
            task.exception()

    async def _check(self, session, check: SpanCheck, snap: _Snapshot) -> str:
        peer, start, end, position, total = snap.peer, snap.start, snap.end, snap.position, snap.total
        prefix, claimed = snap.prefix, snap.claimed
        self.checked += 1
        first = await self._recompute(session, prefix, start, end, {peer})
        if first is None:
            check.unverifiable_until = time.monotonic() + UNVERIFIABLE_RETRY
            event(log, "verification_skipped", hoster=peer[-8:], blocks=f"{start}:{end}", reason="no other route")
            return "unchecked"
        ref_peers, ref = first
        if relative_distance(claimed, ref[:, position:total]) <= self.tolerance:
            check.passed += 1
            check.disputed = False
            return "ok"
        self.mismatches += 1
        third = await self._recompute(session, prefix, start, end, {peer} | ref_peers)
        agrees_ref = third is not None and relative_distance(third[1], ref) <= self.tolerance
        agrees_claim = third is not None and relative_distance(third[1][:, position:total], claimed) <= self.tolerance
        if agrees_ref and not agrees_claim:
            event(log, "verification_failed", logging.WARNING, hoster=peer, blocks=f"{start}:{end}",
                  position=position, distance=round(relative_distance(claimed, ref[:, position:total]), 6))
            self._report(snap)
            return "liar"
        if agrees_claim and not agrees_ref:
            event(log, "verification_checker_lied", logging.WARNING, checker=" ".join(p[-8:] for p in ref_peers))
            for p in ref_peers:
                session.exclude(p)
            return "checker_lied"
        self.disputes += 1
        check.disputed = True
        event(log, "verification_disputed", logging.WARNING, hoster=peer[-8:], blocks=f"{start}:{end}",
              checker=" ".join(p[-8:] for p in ref_peers), third="none" if third is None else "disagrees")
        return "disputed"

    async def _recompute(self, session, prefix: torch.Tensor, start: int, end: int,
                         exclude: set[str]) -> tuple[set[str], torch.Tensor] | None:
        """Blocks [start, end) on `prefix` through `rpc_forward` on hosters outside `exclude`."""
        manager = session.manager
        try:
            # the hosters already known only: a check may hold tokens back (holdback), and a DHT read can
            # stall on a frozen peer (a check once held a stream 30 s that way)
            route = await manager.make_route(start, end, exclude=exclude | session.excluded, adapter=session.adapter,
                                             refresh=False)
        except RouteError:
            return None
        x = prefix
        timeout = manager.config.request_timeout * (1 + prefix.shape[1] / 2048)
        try:
            for span in route:
                x = await transport.rpc_forward(manager.p2p, span.peer_id, manager.model_uid, span.start, span.end,
                                                x, timeout, adapter=session.adapter)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            event(log, "verification_skipped", reason=f"{type(e).__name__}: {e}"[:200])
            return None
        return {s.peer_id for s in route}, x

    def _report(self, snap: _Snapshot) -> None:
        """Publish evidence: the receipt of the checked answer, its input prefix and the signed output."""
        peer = snap.peer
        if snap.receipt is None:
            event(log, "evidence_unavailable", hoster=peer[-8:], reason="no valid receipt for the step")
            return
        if snap.prefix.numel() > MAX_EVIDENCE_ELEMENTS:
            event(log, "evidence_unavailable", hoster=peer[-8:], reason=f"prefix of {snap.prefix.numel()} elements "
                                                                        f"exceeds {MAX_EVIDENCE_ELEMENTS}")
            return
        if self.publish is None:
            event(log, "evidence_unavailable", hoster=peer[-8:], reason="no evidence publisher (no chain registry)")
            return
        ev = Evidence(snap.receipt, snap.prefix.to(snap.dtype).contiguous(), snap.out.contiguous())
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, self.publish, ev)
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())


@dataclass(frozen=True)
class _Snapshot:
    """What a check needs, copied when the step is done (the session moves on meanwhile)."""

    peer: str
    start: int
    end: int
    position: int
    total: int
    prefix: torch.Tensor  # the span's inputs [0, total)
    claimed: torch.Tensor  # the served outputs [position, total)
    out: torch.Tensor  # the whole answer the receipt signs
    receipt: Receipt | None
    dtype: torch.dtype | None

    @classmethod
    def of(cls, st, position: int, n: int) -> _Snapshot:
        c: SpanCheck = st.check
        a = position - c.out_start
        return cls(st.span.peer_id, st.span.start, st.span.end, position, position + n,
                   st.history[:, :position + n].clone(), c.out[:, a:a + n], c.out, c.receipt, c.dtype)
