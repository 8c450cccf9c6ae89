"""In-process compute for the served span: one compute thread, batched decode steps.

The event loop never runs torch: `forward`/`step` put a task on a queue and await its
future. The compute thread takes the next task plus everything else already queued
(optionally waiting `gather_window` seconds for more) and runs inference steps of
different sessions that have the same block range and step length as ONE batch.

Every session keeps its K/V in a `hoster.cache.SessionKV`: per layer one buffer with spare
capacity, new positions written in place (no per-step concatenation). A batched step runs the
linear layers on all rows at once, writes each session's new K/V into its own buffers and runs
attention per session on views of them (`rows_attention`): no session's past is copied into a
batch tensor (hoster.batched). Long prompts run in chunks of `PREFILL_CHUNK` positions.

`run_span` is the probes' thread-safe stateless forward (the `forward` RPC's); hoster.scheduler: what runs when.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import torch

from hoster.adapters import adapted_units, rows_context
from hoster.batched import crop, step_batched
from hoster.cache import CacheBudget, KVCache, SessionKV, enable_rows_attention
from hoster.compile_auto import AutoCompile, Choices
from hoster.compiled import CompiledDecode
from hoster.decode_threads import ThreadSwitch
from hoster.prefix_cache import PrefixCache
from hoster.scheduler import MIN_UNIT_SECONDS, UNIT_STEPS, TaskQueue, UnitPacer, forward_units, run_forward_unit
from hoster.throughput import measure_decode
from subnet.logs import event
from subnet.model.blocks import BlockSpan
from subnet.model.memory import trim

log = logging.getLogger(__name__)

# Positions per forward of a long step: activations (attention scores, MLP) grow with the
# positions of one forward, the KV cache only with the session; 256 keeps a 1024-position
# prefill of a 1024-hidden model within a few tens of MB. Decode steps are never chunked.
PREFILL_CHUNK = 256
# Steps of at least this many positions return their freed activations to the OS afterwards
# (`malloc_trim`, ~ms). Making every large buffer its own mapping instead (mallopt) did the same
# for memory but page-faulted every activation: time to first token +25% (model b, 512 tokens).
TRIM_AFTER = 64
IDLE_QUIET = 5.0  # seconds without work before the hoster counts as idle (re-timings wait for that)


class BackendClosed(RuntimeError):
    """The backend is shutting down; the request was not run."""


class StepError(ValueError):
    """A step that does not fit the session (position, length); protocol type `bad_request`."""


@dataclass
class Session:
    """One client's inference session: its KV cache lives here, touched only by the compute thread."""

    start: int
    end: int
    batch_size: int
    max_length: int
    cache: SessionKV
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    length: int = 0  # positions held in the cache
    last_used: float = field(default_factory=time.monotonic)
    closed: bool = False
    adapter: str | None = None  # LoRA adapter of its rows (hoster.adapters); None: the base model

    def cache_bytes(self) -> int:
        """Bytes of K/V buffers held (capacity, so slightly more than `length` positions)."""
        return self.cache.nbytes()


@dataclass
class _Task:
    future: concurrent.futures.Future
    hidden: torch.Tensor
    start: int
    end: int
    session: Session | None = None
    position: int = 0
    peer: str = ""  # who asked for a forward (round-robin key); "" for local probes
    adapter: str | None = None  # a forward's LoRA adapter (hoster.adapters)

    def key(self) -> tuple:
        return (self.start, self.end, self.hidden.shape[1], self.hidden.dtype)


class Backend:
    def __init__(self, span: BlockSpan, budget: CacheBudget | None = None, *, gather_window: float = 0.0,
                 max_batch_rows: int = 64, align_wait: float | None = None, compile_decode: bool | str = False):
        self.span = span
        # hoster.compiled: one-session decode steps through a torch.compile'd span (after warm_up); "auto":
        # compiled in the background by `start_auto_compile` and used if it wins (hoster.compile_auto)
        self.compiled = CompiledDecode(span) if compile_decode and compile_decode != "off" else None
        self.auto: AutoCompile | None = None
        self.budget = budget
        self.gather_window = gather_window
        self.align_wait = align_wait  # None: adaptive (see _align_wait)
        self._last_batch: dict[tuple, tuple[str, ...]] = {}  # step key -> session ids computed together last
        self._step_seconds = 0.0  # moving average of a one-session step's compute time
        self.max_batch_rows = max_batch_rows
        self.sessions: dict[str, Session] = {}
        self.batches_run = 0  # number of multi-session batched steps (observability, tests)
        self.decode_rounds: Counter[int] = Counter()  # one-position step rounds by sessions in them (metrics)
        self._rows = enable_rows_attention(span.config)  # batched steps need per-session attention
        self.threads = ThreadSwitch()  # small steps' thread count, once chosen (hoster.decode_threads)
        self._queue = TaskQueue()  # hoster.scheduler: step lane + per-peer forward lane
        self._pacer = UnitPacer(self._unit_budget)  # size of forward units between step rounds
        self._closed = False
        self.last_active = time.monotonic()  # when work was last queued (steps, forwards): see `idle`
        self.prefix, self.positions_computed = PrefixCache.attach(budget), 0  # closed sessions' KV; rows x positions
        self._thread = threading.Thread(target=self._loop, name="hoster-compute", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public API

    @property
    def start(self) -> int:
        return self.span.start

    @property
    def end(self) -> int:
        return self.span.end

    def run_span(self, hidden: torch.Tensor, start: int | None = None, end: int | None = None) -> torch.Tensor:
        """Blocking, thread-safe stateless forward of blocks [start, end) (positions 0..seq-1): the `forward`
        RPC path. Input is cast to the served dtype, output returned in the input dtype; not on the compute thread."""
        return self._submit(_Task(concurrent.futures.Future(), hidden, *self._range(start, end))).result()

    async def forward(self, hidden: torch.Tensor, start: int | None = None, end: int | None = None, *,
                      peer: str = "", adapter: str | None = None) -> torch.Tensor:
        """The `forward` RPC: queued in `peer`'s turn of the forward lane (hoster.scheduler)."""
        return await asyncio.wrap_future(self._submit(_Task(concurrent.futures.Future(), hidden,
                                                            *self._range(start, end), peer=peer, adapter=adapter)))

    def open_session(self, start: int, end: int, batch_size: int, max_length: int) -> Session:
        """Admit a session (CacheFull -> busy); no KV memory until its first step (one row until then: prefix_cache)."""
        start, end = self._range(start, end)
        session = Session(start, end, batch_size, max_length, self._new_kv(start, end, 1, max_length))
        if self.budget is not None:
            self.budget.open(session.id, batch_size, max_length)
        self.sessions[session.id] = session
        event(log, "session_opened", session=session.id[:8], blocks=f"{start}:{end}", batch=batch_size,
              max_length=max_length, level=logging.DEBUG)
        return session

    async def step(self, session: Session, hidden: torch.Tensor, position: int) -> torch.Tensor:
        """Truncate the session's cache to `position`, run the new positions, return their outputs."""
        if session.closed:
            raise BackendClosed("session closed")
        b, n = hidden.shape[0], hidden.shape[1]
        if b != session.batch_size and (b != 1 or session.cache.batch_size != 1):  # 1 row for all: prefix_cache
            raise StepError(f"batch size {b} != session batch size {session.batch_size}")
        if position > session.length:
            raise StepError(f"position {position} is beyond the session's {session.length} cached positions")
        if position + n > session.max_length:
            raise StepError(f"position {position} + {n} new positions exceeds max_length {session.max_length}")
        if self.budget is not None:
            self.budget.resize(session.id, b * (position + n))  # CacheFull -> busy, session unchanged
        session.last_used = time.monotonic()
        self.positions_computed += b * n
        task = _Task(concurrent.futures.Future(), hidden, session.start, session.end, session, position)
        try:
            return await asyncio.wrap_future(self._submit(task))
        except BaseException:
            if self.budget is not None and not session.closed:
                self.budget.resize(session.id, b * session.length)  # charge what the cache really holds
            raise
        finally:
            session.last_used = time.monotonic()

    def close_session(self, session: Session) -> None:
        """Free the session's cache and budget (idempotent)."""
        if session.closed:
            return
        session.closed = True
        self.sessions.pop(session.id, None)
        if self.budget is not None:
            self.budget.close(session.id)
        self._queue.put(_Task(concurrent.futures.Future(), torch.empty(0), session.start, session.end,
                              session, position=-1))  # the compute thread drops the KV tensors

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.auto is not None:
            self.auto.stop()  # no more re-timing of the decode path
        for s in list(self.sessions.values()):
            self.close_session(s)
        self._queue.put(None)
        self._thread.join(timeout=30)

    @property
    def decode_path(self) -> str:
        """`compiled`, `eager` or (auto, still in the background) `compiling`: announced and exported."""
        if self.auto is not None and not self.auto.done.is_set():
            return "compiling"  # the background job (one-session graph, then batched buckets) still runs
        return "compiled" if self.compiled is not None and self.compiled.ready else "eager"

    def start_auto_compile(self, key: str, choices: Choices, on_done=None) -> AutoCompile:
        """Compile the decode step in the background; serve it once measured faster (hoster.compile_auto)."""
        new_kv = lambda n: self._new_kv(self.span.start, self.span.end, 1, n)  # noqa: E731
        self.auto = AutoCompile(self.compiled, key, choices, new_kv, KVCache, on_done, idle=self.idle,
                                threads=self.threads)
        return self.auto.start()

    def warm_up(self) -> float:
        """Compile the decode step if `compile_decode` (seconds taken, 0 otherwise); before serving."""
        if self.compiled is None or self.compiled.ready or self.auto is not None:
            return 0.0
        start, end = self.span.start, self.span.end
        return self.compiled.warm_up(lambda max_length: self._new_kv(start, end, 1, max_length), KVCache)

    def measure_throughput(self, steps: int = 16, prefix: int = 16) -> float:
        """Decode tokens/s of the full span for one sequence (hoster/throughput.py)."""
        return measure_decode(self.span, self._new_kv, self._run, steps, prefix)

    def _range(self, start: int | None, end: int | None) -> tuple[int, int]:
        return self.span._check_range(start, end)

    def _new_kv(self, start: int, end: int, batch_size: int, max_length: int) -> SessionKV:
        return SessionKV(start, end, batch_size, max_length, self.span.num_kv_heads, self.span.head_dim,
                         self.span.dtype, self.span.device)

    def idle(self) -> bool:
        """No session open and nothing queued for IDLE_QUIET s: a re-timing now competes with nobody (a gap
        between one client's requests, say a benchmark's passes, is not idle)."""
        return not self.sessions and time.monotonic() - self.last_active >= IDLE_QUIET

    def _submit(self, task: _Task) -> concurrent.futures.Future:
        if self._closed:
            raise BackendClosed("hoster is shutting down")
        self.last_active = time.monotonic()
        self._queue.put(task)
        return task.future

    def _loop(self) -> None:
        """Rounds of every waiting step (batched), each followed by one unit of forward work."""
        job = None  # (task, generator) of the forward in progress
        while True:
            if job is None:
                self._queue.wait()
            try:
                task = self._queue.get_nowait()
            except queue.Empty:
                task = False
            if task is None:
                break
            if task is not False:
                tasks = [task]
                if task.session is not None and task.position >= 0:
                    self._gather(task, tasks)
                while True:  # every step already waiting joins this round
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        self._queue.put_front([None])
                        break
                    tasks.append(more)
                self._run_round(tasks)
            if job is None and (nxt := self._queue.next_forward()) is not None:
                if nxt.future.set_running_or_notify_cancel():
                    units = forward_units(self.span, nxt.hidden, nxt.start, nxt.end, self._new_kv, self._pacer)
                    job = (nxt, adapted_units(self.span, nxt.adapter, nxt.hidden.shape[0], units))
            if job is not None:
                self.threads.use(job[0].hidden.shape[0] * job[0].hidden.shape[1])
                if run_forward_unit(*job, trim_after=TRIM_AFTER):
                    job = None
        if job is not None:
            job[1].close()
            job[0].future.set_exception(BackendClosed("hoster is shutting down"))
        self._fail_pending()

    def _gather(self, first: _Task, tasks: list[_Task]) -> None:
        """Collect more steps for this round: for `gather_window` seconds (only while other sessions
        are active), and until the sessions batched with `first` last round have sent their next
        step (at most `align_wait`).

        Concurrent decoders that were computed together get their results together and come back
        together, a few transport hops apart. Without waiting for them, the first arrival runs
        alone and the rest form a second batch behind it: the sessions split into groups that
        alternate forever (measured: 8 sessions scaled 2x instead of 4x+). A session that was
        alone last round is expected by nobody, so a single session never waits.
        """
        now = time.monotonic()
        fixed_until = now + (self.gather_window if self._others_active(first.session, now) else 0.0)
        expected = {sid for sid in self._last_batch.get(first.key(), ())
                    if sid != first.session.id and sid in self.sessions}
        align_until = now + (self._align_wait() if expected else 0.0)
        while True:
            deadline = max(fixed_until, align_until if expected else 0.0)
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                more = self._queue.get(timeout=left)
            except queue.Empty:
                return
            if more is None:
                self._queue.put_front([None])
                return
            tasks.append(more)
            if more.session is not None:
                expected.discard(more.session.id)

    def _others_active(self, session: Session, now: float) -> bool:
        """Whether another open session stepped within the last second: only then can waiting
        `gather_window` batch anything. A lone decoder never pays the window."""
        return any(s is not session and now - s.last_used < 1.0 for s in list(self.sessions.values()))

    def _unit_budget(self) -> float:
        """Seconds one forward unit may take: ~UNIT_STEPS decode steps while a session is active."""
        now = time.monotonic()
        if not any(now - s.last_used < 1.0 for s in list(self.sessions.values())):
            return float("inf")
        return max(MIN_UNIT_SECONDS, UNIT_STEPS * self._step_seconds)

    def _align_wait(self) -> float:
        """How long to wait for last round's batch mates: about one single-session step."""
        if self.align_wait is not None:
            return self.align_wait
        return min(0.05, max(0.002, self._step_seconds))

    def _fail_pending(self) -> None:
        for task in self._queue.drain():
            if task is not None and not task.future.done():
                task.future.set_exception(BackendClosed("hoster is shutting down"))

    def _run_round(self, tasks: list[_Task]) -> None:
        """Every step taken (same-key steps batched), but at most one long one: the others go
        back to the front of the queue, so decode steps arriving meanwhile run between them."""
        groups: dict[tuple, list[_Task]] = {}
        long_steps = [t for t in tasks if t.position >= 0 and t.hidden.shape[1] > PREFILL_CHUNK]
        if len(long_steps) > 1:
            later = {id(t) for t in long_steps[1:]}
            self._queue.put_front(long_steps[1:])
            tasks = [t for t in tasks if id(t) not in later]
        for task in tasks:
            if not task.future.set_running_or_notify_cancel():
                continue
            if task.position < 0:
                self._guard(task, self._drop_cache, task.session)
            elif task.session.closed:
                task.future.set_exception(BackendClosed("session closed"))
            else:
                groups.setdefault(task.key(), []).append(task)
        for group in groups.values():
            if not self._rows or group[0].hidden.shape[1] > PREFILL_CHUNK:
                for task in group:  # long steps run alone, in chunks
                    self._guard(task, self._step_one, task)
                continue
            while group:
                batch, rows, seen = [], 0, set()
                for task in list(group):
                    b = task.hidden.shape[0]
                    if task.session.id in seen or (batch and rows + b > self.max_batch_rows):
                        continue
                    batch.append(task)
                    seen.add(task.session.id)
                    rows += b
                    group.remove(task)
                decode = batch[0].hidden.shape[1] == 1
                if decode:  # only one-position steps: prompt lengths vary, decode keys do not
                    self._last_batch[batch[0].key()] = tuple(t.session.id for t in batch)
                    self.decode_rounds[len(batch)] += 1
                if len(batch) == 1:
                    t0 = time.perf_counter()
                    self._guard(batch[0], self._step_one, batch[0])
                    if decode:
                        self._step_seconds = 0.8 * self._step_seconds + 0.2 * (time.perf_counter() - t0)
                else:
                    try:
                        outs = self._step_batched(batch)
                    except Exception as e:  # fall back to one by one (e.g. a bad tensor in the batch)
                        event(log, "batched_step_failed", level=logging.WARNING, error=repr(e), sessions=len(batch))
                        for task in batch:
                            self._guard(task, self._step_one, task)
                    else:
                        for task, out in zip(batch, outs):
                            task.future.set_result(out)

    @staticmethod
    def _guard(task: _Task, fn, *args) -> None:
        try:
            result = fn(*args)
        except BaseException as e:  # delivered to the awaiting handler, never kills the thread
            if not task.future.done():
                task.future.set_exception(e)
        else:
            if not task.future.done():
                task.future.set_result(result)

    def _drop_cache(self, session: Session) -> None:
        if self.prefix is not None and self.prefix.adopt(session):
            return  # the prefix cache owns its KV now
        session.cache.clear()
        session.length = 0
        trim()  # hand the freed KV memory back to the OS

    def _run(self, hidden: torch.Tensor, cache: KVCache, kv: SessionKV, start: int, end: int, adapter: str = ""):
        """One session's forward through [start, end): compiled when it serves the step, else eager."""
        if self.compiled is not None and self.compiled.serves(hidden, kv, start, end) and not adapter:
            out = self.compiled(hidden, cache, start, end)
            if out is not None:
                return out
        with rows_context(self.span, [(adapter, hidden.shape[0])]):
            return self.span(hidden, cache=cache, start=start, end=end)

    def _step_one(self, task: _Task) -> torch.Tensor:
        crop(task.session, task.position, task.hidden.shape[0])  # may replace the KV (hoster.prefix_cache)
        s, kv = task.session, task.session.cache
        x = task.hidden.to(self.span.device, self.span.dtype)
        n = x.shape[1]
        self.threads.use(x.shape[0] * n)
        kv.reserve(kv.length + n)  # once for the whole step: chunks never reallocate
        cache = KVCache(kv)
        outs = []
        try:
            for i in range(0, n, PREFILL_CHUNK):
                chunk = x[:, i:i + PREFILL_CHUNK]
                outs.append(self._run(chunk, cache, kv, s.start, s.end, s.adapter))
                kv.length += chunk.shape[1]  # commit only once every layer has the chunk
        finally:
            s.length = kv.length
        out = outs[0] if len(outs) == 1 else torch.cat(outs, 1)
        out = out.to("cpu", task.hidden.dtype)
        if n >= TRIM_AFTER:
            trim()  # a prompt's activations are freed: hand the pages back instead of keeping fragments
        return out

    def _step_batched(self, batch: list[_Task]) -> list[torch.Tensor]:
        self.threads.use(sum(t.hidden.shape[0] * t.hidden.shape[1] for t in batch))
        out = step_batched(self.span, batch, self.auto.batches if self.auto else None)  # hoster.batched
        self.batches_run += 1
        return out
