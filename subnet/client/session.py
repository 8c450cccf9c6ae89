"""An inference session over a chain of hosters, surviving hosters that fail mid-generation.

Each span of the route keeps the hidden states it was sent (its input history). When a
hoster fails or times out, its span is re-routed (possibly split across several hosters),
the new hosters get the history replayed from position 0 together with the current step in
one call, and generation continues at the same position with the same numbers.

All methods are coroutines for the client loop; `RemoteSession` is the thread-side handle.
"""

from __future__ import annotations

import asyncio
import logging
import time

import torch

from subnet.client.manager import SequenceManager
from subnet.client.prefix import apply_reuse, plan_reuse, remember
from subnet.client.routing import RouteError, Span
from subnet.client.span_state import SentStep, SpanState, record_history
from subnet.client.transport import InferenceStream, RemoteError, StepDeadline
from subnet.client.verification import mirror_and_verify
from subnet.logs import event
from subnet.model.adapters import session_model

log = logging.getLogger(__name__)


class SessionError(RuntimeError):
    """Generation could not continue: retries exhausted or the model cannot be covered."""


class InferenceSession:
    """Positions 0..max_length-1 of `batch_size` sequences through all blocks of the model."""

    def __init__(self, manager: SequenceManager, max_length: int, batch_size: int = 1,
                 prefix_tokens: list[int] | None = None, adapter: str | None = None):
        if max_length <= 0 or batch_size <= 0:
            raise ValueError("max_length and batch_size must be positive")
        self.manager = manager
        self.adapter = adapter or None  # LoRA adapter: only hosters announcing it serve this session
        self.max_length = max_length
        self.batch_size = batch_size
        self.position = 0
        self.spans: list[SpanState] = []
        self.reroutes = 0
        self.closed = False
        self._excluded: set[str] = set()  # hosters that refused this session's request (not banned)
        self._patient: set[str] = set()  # sole hosters of their blocks that missed a deadline: no deadline
        self.waited_late = 0  # times a late hoster with no replacement was waited for (observability, tests)
        self._precision: str | None = None  # the precision class of the first route; re-routes keep it
        self._step_id = 0  # pairs pushed inputs with their steps on the hosters
        self.pushed_steps = 0  # steps forwarded hoster to hoster end to end (observability, tests)
        self.push_off = False  # a pushed input differed from what its sender returned to us: hop by hop now
        self.push_fallbacks = 0  # pushed steps finished hop by hop after a problem
        self.verifier = manager.make_verifier()  # None: no client-side checks
        self.redone_steps = 0  # steps recomputed after a check caught a hoster
        self.prefix_tokens = prefix_tokens  # the prompt's token ids: reuse hosters' cached KV (client.prefix)
        self.reused = 0  # positions the hosters already held at open (the caller starts there)
        self.narrow = batch_size > 1  # rows identical so far: a step may send one row for all
        self._align_key: tuple | None = None  # the route this session last aligned its steps on

    @property
    def route(self) -> list[Span]:
        return [s.span for s in self.spans]

    @property
    def _cache_tokens(self) -> int:
        return self.max_length * self.batch_size

    async def open(self) -> InferenceSession:
        """Choose a route and open a stream on every hoster (failures re-route like in `step`)."""
        plan = await plan_reuse(self)
        route = plan.record.route if plan else await self._make_route(0, self.manager.num_blocks)
        self.spans = [SpanState(s) for s in route]
        self.manager.stats.acquire(route)
        results = await asyncio.gather(*(self._open_stream(st, plan.offer(i) if plan else None)
                                         for i, st in enumerate(self.spans)), return_exceptions=True)
        for st, err in zip(self.spans, results):
            if isinstance(err, asyncio.CancelledError):
                raise err
            if isinstance(err, BaseException):
                st.open_error = err  # `step` reports it and re-routes this span on first use
        if plan:
            apply_reuse(self, plan)
        return self

    async def _make_route(self, start: int, end: int) -> list[Span]:
        try:
            route = await self.manager.make_route(start, end, cache_tokens_needed=self._cache_tokens,
                                                  exclude=self._excluded, precision=self._precision,
                                                  adapter=self.adapter)
            if not self.manager.config.mix_precisions and route and self._precision is None:
                self._precision = route[0].precision or None
            return route
        except RouteError as e:
            raise SessionError(str(e)) from None

    async def _open_stream(self, st: SpanState, prefix: list | None = None) -> None:
        cfg = self.manager.config
        st.stream = await InferenceStream.open(
            self.manager.p2p, st.span.peer_id, self.manager.model_uid, st.span.start, st.span.end,
            self.max_length, self.batch_size, cfg.connect_timeout, prefix=prefix, adapter=self.adapter,
        )

    async def step(self, hidden: torch.Tensor, position: int | None = None) -> torch.Tensor:
        """Run `hidden` `[batch, n, hidden]` at positions `position..position+n-1` through every block.

        `position` defaults to the current length; a smaller value rolls the session back.
        """
        if self.closed:
            raise SessionError("session is closed")
        if self.verifier is not None and self.verifier.caught:
            await self._drop_caught()
        position = self.position if position is None else position
        n = hidden.shape[1]
        if hidden.dim() != 3 or hidden.shape[0] not in (self.batch_size, 1 if self.narrow else self.batch_size):
            raise ValueError(f"expected [batch={self.batch_size}, n, hidden], got {list(hidden.shape)}")
        if not 0 <= position <= self.position or position + n > self.max_length:
            raise ValueError(f"positions {position}..{position + n} outside the session (length {self.position}, "
                             f"max_length {self.max_length})")
        x, x_start = hidden, position
        idx, attempts = 0, 0
        errors: list[str] = []
        failure: BaseException | None = None  # a pushed step's error, handled like a direct one below
        if hidden.shape[0] == self.batch_size and self._can_push(position):
            idx, x, failure = await self._step_pushed(hidden, position, n)
            if idx == len(self.spans):
                self.pushed_steps += 1
            else:
                self.push_fallbacks += 1
        while idx < len(self.spans):
            st = self.spans[idx]
            try:
                if failure is not None:
                    err, failure = failure, None
                    raise err
                x, x_start = await self._run_span(st, x, x_start, position, n)
                idx += 1
            except asyncio.CancelledError:
                raise
            except (SessionError, ValueError):
                raise
            except Exception as e:
                attempts += 1
                errors.append(f"{st.span.peer_id[-8:]}[{st.span.start}:{st.span.end}): {type(e).__name__}: {e}")
                if attempts > self.manager.config.max_retries:
                    raise SessionError(f"giving up after {attempts} failures: " + "; ".join(errors)) from e
                kind = e.type if isinstance(e, RemoteError) else None
                if kind == "unknown_session" and st.stream is not None:
                    # The hoster expired our idle session: open a new one there and replay (no ban).
                    await st.stream.close()
                    st.stream, st.server_pos = None, 0
                    continue
                if kind in ("bad_request", "too_large", "out_of_range", "unknown_model", "unknown_adapter"):
                    self._excluded.add(st.span.peer_id)  # this hoster cannot take this request; others may
                else:
                    self.manager.report_failure(st.span.peer_id, e)
                try:
                    await self._replace(idx)
                except SessionError as route_error:
                    if not self._wait_for_late(st, e, position):
                        if st.stream is not None:
                            await st.stream.close()  # its answers, if any, are nobody's
                        raise SessionError(f"{route_error} (after: {'; '.join(errors)})") from e
        self.position = position + n
        self.narrow = self.narrow and hidden.shape[0] == 1
        if self.verifier is not None and not await self.verifier.after_step(self, position, n):
            self.redone_steps += 1
            if self.redone_steps > 4 * (self.manager.config.max_retries + 1):
                raise SessionError("too many steps redone after failed checks")
            return await self.step(hidden, position)  # over the new route (the liar is excluded)
        return x[:, x.shape[1] - n:]

    @property
    def excluded(self) -> set[str]:
        return set(self._excluded)

    def exclude(self, peer_id: str) -> None:
        """Never route this session to `peer_id` again (e.g. it failed a check)."""
        self._excluded.add(peer_id)

    async def _drop_caught(self) -> None:
        """Re-route spans whose hoster a background check caught lying (before this step uses them)."""
        caught, self.verifier.caught = self.verifier.caught, set()
        for idx in reversed(range(len(self.spans))):
            if self.spans[idx].span.peer_id in caught:
                await self.drop_span(idx, self.spans[idx].span.peer_id)

    async def drop_span(self, idx: int, peer_id: str) -> None:
        """A check caught the hoster of span `idx`: exclude and ban it, re-route its blocks."""
        self._excluded.add(peer_id)
        self.manager.report_failure(peer_id, RuntimeError("failed a client-side check"))
        await self._replace(idx)

    def _can_push(self, position: int) -> bool:
        """Forward hoster to hoster only in the steady state: every span open and holding the session's
        whole length (`position` may roll back into it: speculative decoding's rejected drafts)."""
        if not self.manager.config.push or self.push_off or len(self.spans) < 2 or position > self.position:
            return False
        return all(st.stream is not None and not st.stream.closed and st.open_error is None
                   and st.server_pos == self.position and st.stream.session_id for st in self.spans)

    async def _step_pushed(self, hidden: torch.Tensor, position: int,
                           n: int) -> tuple[int, torch.Tensor, BaseException | None]:
        """One step with hoster-to-hoster forwarding (docs/PROTOCOL.md, `rpc_push`).

        Every hoster gets its request at once: the first with the input, the others told to
        wait for their predecessor's push. Outputs still come back to the client (they are the
        next span's history, needed to replay after a failure), but off the critical path.
        Returns `(i, x, error)`: spans before `i` are done and `x` is span `i`'s input; the
        caller continues hop by hop from there (with `error` raised for span `i` if it failed).
        """
        if n == 1:  # one hoster batches concurrent sessions well on its own (measured): only chains align
            await self._aligned()
        self._step_id += 1
        k = len(self.spans)
        timeout = self.manager.config.request_timeout * (1 + n / 2048)
        for i, st in enumerate(self.spans):
            meta: dict = {"step_id": self._step_id}
            if i + 1 < k:
                nxt = self.spans[i + 1]
                meta["push_to"] = {"peer": nxt.span.peer_id, "session_id": nxt.stream.session_id}
            if i > 0:
                meta["await_push"] = {"from": self.spans[i - 1].span.peer_id, "length": n,
                                      "timeout": min(timeout * i, 120.0)}
            st.stream.send_step(position, hidden if i == 0 else None, **meta)
            st.sent = None  # a direct request of an earlier, failed attempt is not this step's
            if i == 0:
                await asyncio.sleep(0)  # let the first hoster's request go out before the others
        x = hidden
        for i, st in enumerate(self.spans):
            record_history(st, x, position, self.max_length)
            # Span i's deadline runs from when span i-1 answered: i-1 pushes before it answers, so
            # from then on only span i's own work (and the push in flight) is outstanding.
            peer = st.span.peer_id
            t0 = time.perf_counter()
            try:
                out, meta = await st.stream.receive_step(position, x.shape, timeout,
                                                         self._deadline(peer, n, timeout), self._probe(peer))
            except asyncio.CancelledError:
                for later in self.spans[i:]:
                    later.stream.stale = later.stream.pending  # whatever they answer is nobody's
                raise
            except Exception as e:
                if isinstance(e, StepDeadline) and e.alive:
                    # Late but alive: maybe slow, maybe its pushed input was lost on the way (not
                    # its fault). No ban: send it this step directly; if that is late too, it is banned.
                    event(log, "push_step_late", hoster=peer[-8:], error=str(e)[:200], level=logging.INFO)
                    for later in self.spans[i:]:
                        later.stream.abandon()
                    return i, x, None
                for later in self.spans[i + 1:]:
                    later.stream.abandon()  # they get this step again, hop by hop
                if isinstance(e, RemoteError) and e.type == "push_missing":
                    return i, x, None  # its input never came (upstream trouble): send it directly
                return i, x, e
            self._answered(peer, n, t0)
            st.server_pos = position + n
            self._receipt(st, x, position, out, meta, pushed=i > 0)
            x = out
            if meta.get("push_error") and i + 1 < k:
                event(log, "push_failed", hoster=st.span.peer_id[-8:], error=str(meta["push_error"])[:200],
                      level=logging.INFO)
                for later in self.spans[i + 1:]:
                    later.stream.abandon()
                return i + 1, x, None
        return k, x, None

    async def _aligned(self) -> None:
        """Wait for this route's other concurrent sessions, to send together (subnet.client.send_align)."""
        key = tuple((st.span.peer_id, st.span.start, st.span.end) for st in self.spans)
        if self._align_key is not None and self._align_key != key:
            self.manager.aligner.leave(self._align_key, id(self))
        self._align_key = key
        await self.manager.aligner.ready(key, id(self))

    async def _run_span(self, st: SpanState, x: torch.Tensor, x_start: int, position: int,
                        n: int) -> tuple[torch.Tensor, int]:
        """Send this span what its hoster is missing; returns its outputs and their first position."""
        cfg = self.manager.config
        if st.open_error is not None:
            err, st.open_error = st.open_error, None
            raise err
        if st.stream is None:
            await self._open_stream(st)
        need = min(st.server_pos, position)  # the hoster's cache restarts here
        if need < x_start:
            if st.history is None:
                raise RuntimeError("span lost its history")  # cannot happen: fresh spans start at 0
            inp = torch.cat([st.history[:, need:x_start].to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)
        else:
            inp = x[:, need - x_start:]
        peer = st.span.peer_id
        sent, resume, st.sent, st.resume = st.sent, st.resume, None, False
        if resume and sent is not None and sent.position == position:  # its answer is still on its way
            need, inp = sent.need, sent.inp
            # what is left of its own timeout, but never less than a third of it: the deadline, the probe
            # and the search for a replacement were spent before we decided to wait
            left = max(sent.timeout / 3, sent.timeout - (time.perf_counter() - sent.t0))
            out, meta = await st.stream.receive_step(need, inp.shape, left)  # no deadline: it has no stand-in
        else:
            record_history(st, inp, need, self.max_length)
            timeout = cfg.request_timeout * (1 + inp.shape[1] / 2048)
            st.sent = sent = SentStep(position, need, inp, timeout, time.perf_counter())
            st.stream.send_step(need, inp)
            out, meta = await st.stream.receive_step(need, inp.shape, timeout,
                                                     self._deadline(peer, inp.shape[1], timeout), self._probe(peer))
        st.sent = None
        self._answered(peer, inp.shape[1], sent.t0, waited=resume)
        st.server_pos = position + n
        self._receipt(st, inp, need, out, meta)
        return out, need

    def _receipt(self, st: SpanState, x: torch.Tensor, position: int, out: torch.Tensor, meta: dict, *,
                 pushed: bool = False) -> None:
        """Mirror the span's input chain and verify the hoster's signed receipt of this step.

        A pushed step's receipt also fails when the upstream hoster pushed something other than
        what it returned to us: this hoster is not to blame, so the session stops pushing and the
        verifier redoes the step hop by hop instead of accusing it."""
        if self.verifier is None:
            return
        model = session_model(self.manager.model_uid, self.adapter)  # what the receipts name
        mirror_and_verify(st.check, st.stream, st.span.peer_id, model, st.span.start, st.span.end, x, position, out,
                          meta)
        st.check.pushed_suspect = pushed and not st.check.receipt_ok
        if st.check.pushed_suspect and not self.push_off:
            self.push_off = True
            event(log, "push_disabled", hoster=st.span.peer_id[-8:], position=position,
                  reason="receipt of a pushed step does not match the input the client saw")

    def _answered(self, peer_id: str, positions: int, t0: float, waited: bool = False) -> None:
        """A hoster answered a step sent at `t0`: its time is its measured speed, unless the answer was
        waited for past a deadline (that time includes the wait and would inflate every deadline for it);
        either way its next step has a deadline again."""
        if not waited and peer_id not in self._patient:
            self.manager.step_times.record(peer_id, positions, time.perf_counter() - t0)
        self._patient.discard(peer_id)

    def _deadline(self, peer_id: str, positions: int, timeout: float) -> float | None:
        """The step deadline for this hoster, or None while it is a late sole hoster being waited for."""
        if peer_id in self._patient:
            return None
        return self.manager.step_times.deadline(peer_id, positions, timeout)

    def _wait_for_late(self, st: SpanState, error: BaseException, position: int) -> bool:
        """No other hoster serves the blocks of a hoster that missed its step deadline: a late hoster
        beats none (a loaded machine, a long prefill), so it is forgiven and waited for up to the
        request's own timeout. A direct request still in flight keeps its place (no recompute); a
        pushed one is dropped and the step sent directly. False: not a missed deadline, or the
        stream is gone, so the caller fails the step."""
        if not isinstance(error, StepDeadline) or st.stream is None or st.stream.closed:
            return False
        peer = st.span.peer_id
        self.manager.report_success(peer)  # lift the ban the missed deadline earned
        self._patient.add(peer)
        if st.sent is not None and st.sent.position == position:
            st.resume = True
        elif st.stream.pending > st.stream.stale:
            st.stream.abandon()  # a pushed step's answer: nobody's now
        self.waited_late += 1
        event(log, "waiting_for_late_hoster", hoster=peer[-8:], blocks=f"{st.span.start}:{st.span.end}",
              position=position, reason="no other hoster serves these blocks", level=logging.INFO)
        return True

    def _probe(self, peer_id: str):
        """The liveness check `InferenceStream` runs when this hoster misses a step deadline."""
        return lambda: self.manager.alive(peer_id)

    async def _replace(self, idx: int) -> None:
        """Swap the failed span at `idx` for a new route over its blocks, inheriting its history."""
        old = self.spans[idx]
        route = await self._make_route(old.span.start, old.span.end)  # first: without one, `old` may be waited for
        if old.stream is not None:
            await old.stream.close()
        self.manager.stats.release([old.span])
        new = [SpanState(s) for s in route]
        new[0].history = old.history  # replayed from position 0; later spans get it from new[0]'s outputs
        self.manager.stats.acquire(route)
        self.spans[idx:idx + 1] = new
        self.reroutes += 1
        event(log, "rerouted", failed=old.span.peer_id[-8:], blocks=f"{old.span.start}:{old.span.end}",
              replacement=" ".join(f"{s.peer_id[-8:]}[{s.start}:{s.end})" for s in route), position=self.position)

    async def close(self, tokens: list[int] | None = None) -> None:
        """End the session; `tokens` (the ids of positions [0, position)) lets a later session reuse it."""
        if self.closed:
            return
        remember(self, tokens)
        self.closed = True  # background checks still finish (bounded by timeouts): a liar is still reported
        if self._align_key is not None:
            self.manager.aligner.leave(self._align_key, id(self))
        self.manager.stats.release([s.span for s in self.spans])
        await asyncio.gather(*(s.stream.close() for s in self.spans if s.stream is not None), return_exceptions=True)


class RemoteSession:
    """Thread-side handle of an `InferenceSession` (blocking calls into the client loop)."""

    def __init__(self, manager: SequenceManager, max_length: int, batch_size: int = 1,
                 prefix_tokens: list[int] | None = None, adapter: str | None = None):
        self.manager = manager
        self.runtime = manager.runtime
        self._session = InferenceSession(manager, max_length, batch_size, prefix_tokens, adapter)
        cfg = manager.config
        self._bound = (cfg.max_retries + 2) * (cfg.connect_timeout + cfg.request_timeout + cfg.ping_timeout) \
            + cfg.wait_for_coverage + 30

    @property
    def session(self) -> InferenceSession:
        return self._session

    @property
    def position(self) -> int:
        return self._session.position

    @property
    def route(self) -> list[Span]:
        return self._session.route

    def open(self) -> RemoteSession:
        self.runtime.run(self._session.open(), timeout=self._bound)
        return self

    def step(self, hidden: torch.Tensor, position: int | None = None) -> torch.Tensor:
        return self.runtime.run(self._session.step(hidden, position), timeout=self._bound)

    async def astep(self, hidden: torch.Tensor, position: int | None = None) -> torch.Tensor:
        return await self.runtime.run_async(self._session.step(hidden, position))

    def close(self, tokens: list[int] | None = None) -> None:
        try:
            self.runtime.run(self._session.close(tokens), timeout=10)
        except Exception:
            pass

    def __enter__(self) -> RemoteSession:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()
