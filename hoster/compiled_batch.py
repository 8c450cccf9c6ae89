"""Batched decode steps through compiled graphs, in shape buckets of 2, 4 and 8 sessions.

A batched decode step of several one-row sessions (hoster.batched) runs the linear layers on
all rows at once and attention per session on views of each session's own K/V buffers. Eager,
its time is mostly the same per-op overhead as a one-session step (8 sessions of model (a),
4 blocks: 6.5 ms eager against 4.4 ms through a graph, in one process). Compiling it
specialises on the number of sessions (one attention call per session is traced), so each
bucket has its own graph and a batch is padded up to its bucket with scratch sessions
(zeros in, outputs dropped; their K/V is written at a fixed scratch position). Lengths and
capacities are symbolic as in `hoster.compiled`, so one graph per bucket serves every mix
of session lengths.

Served: one-position steps of 2-8 one-row sessions over the whole span, full attention only
(no mask), no adapters, every session at length >= 2 with a spare position. Anything else,
or a step whose guards fail, runs eagerly (never compiles on the compute thread).

A bucket is compiled on demand: once DEMAND_STEPS eager batched steps of its size were served
(`note_eager`), and they are at least DEMAND_SHARE of the batched steps seen, hoster.compile_auto
compiles and times it on its own thread. The share keeps stragglers from asking: 8 sessions sent
in rounds of 8 (subnet.client.send_align) still leave a few rounds of 4 or 2 at the ends of
generations, and a compile started by them in the middle of serving took the hoster's cores and
GIL for ~10 s (a benchmark's 8-session pass fell from ~120 to 16-33 tok/s). Each bucket graph
costs memory for the life of the process (12 blocks of model b: +47 / +56 / +108 MB for buckets
2 / 4 / 8), so a hoster that never batches never pays for one.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import torch

from hoster.cache import RowsCache, SessionKV
from hoster.compiled import COMPILE_LOCK, RECOMPILE_REFUSED, SLACK, _no_duck_shapes
from subnet.logs import event
from subnet.model.blocks import layer_type

log = logging.getLogger(__name__)

BUCKETS = (2, 4, 8)
DEMAND_STEPS = 16  # eager batched steps of a bucket's size before that bucket is compiled (hoster.compile_auto)
DEMAND_SHARE = 0.1  # ... and the least share of all batched steps (compiled or eager) they must be
SCRATCH_LENGTH = 4  # where the padding sessions' K/V is written every step
MAX_FALLBACKS = 8


def bucket_of(sessions: int) -> int | None:
    return next((b for b in BUCKETS if sessions <= b), None)


class CompiledBatches:
    """The compiled span (`CompiledDecode._fn`) called on padded batches; `ready` holds the buckets in use."""

    def __init__(self, compiled):
        self.compiled, self.span = compiled, compiled.span
        span = self.span
        self.full_attention = all(layer_type(span.config, i) == "full_attention" for i in range(span.start, span.end))
        self.scratch = [self._new_kv(64) for _ in range(BUCKETS[-1] - 1)]
        for kv in self.scratch:
            kv.reserve(SCRATCH_LENGTH + SLACK)
            kv.length = SCRATCH_LENGTH
        self.ready: set[int] = set()
        self.steps = self.fallbacks = self.busy = 0
        # compiled on demand (hoster.compile_auto): eager batched steps seen per bucket, buckets asked for,
        # buckets not to ask for (measured slower on a quiet start of this shape)
        self.demand: dict[int, int] = {}
        self.requested: set[int] = set()
        self.skip: set[int] = set()
        self.on_demand: Callable[[int], None] | None = None

    def _new_kv(self, max_length: int) -> SessionKV:
        s = self.span
        return SessionKV(s.start, s.end, 1, max_length, s.num_kv_heads, s.head_dim, s.dtype, s.device)

    def serves(self, batch: list) -> bool:
        """Whether a batch of tasks (hoster.backend._Task) takes a compiled bucket."""
        return bucket_of(len(batch)) in self.ready and self.fits(batch)

    def note_eager(self, batch: list) -> None:
        """A batched step ran eagerly: count it for its bucket if a graph could serve it. The bucket is
        asked for (`on_demand(bucket)`, hoster.compile_auto) after DEMAND_STEPS such steps that are at least
        DEMAND_SHARE of the batched steps seen, unless it is compiled already or measured slower (`skip`)."""
        b = bucket_of(len(batch))
        if b is None or b in self.ready or b in self.skip or b in self.requested or not self.fits(batch):
            return
        self.demand[b] = self.demand.get(b, 0) + 1
        seen = self.steps + sum(self.demand.values())  # compiled and counted eager batched steps
        if self.demand[b] >= max(DEMAND_STEPS, DEMAND_SHARE * seen):
            self.requested.add(b)
            if self.on_demand is not None:
                self.on_demand(b)

    def fits(self, batch: list) -> bool:
        """Whether a batch has the shape a bucket graph serves (whether or not that bucket is compiled)."""
        return (bucket_of(len(batch)) is not None and self.full_attention and batch[0].hidden.shape[1] == 1
                and batch[0].start == self.span.start and batch[0].end == self.span.end
                and all(t.hidden.shape[0] == 1 and t.session.cache.batch_size == 1 and not t.session.adapter
                        and getattr(t.session, "fork", None) is None and 2 <= t.position == t.session.cache.length
                        and t.position + SLACK <= t.session.cache.max_length for t in batch))

    def run(self, x: torch.Tensor, kvs: list[SessionKV], *, checked: bool = True) -> torch.Tensor | None:
        """Outputs of the real rows of `x` [sessions, 1, hidden] (K/V written, lengths not moved), or
        None when the bucket's graph does not cover the step (the caller runs it eagerly)."""
        if checked and not COMPILE_LOCK.acquire(blocking=False):
            self.busy += 1  # another thread is compiling (hoster.compiled.COMPILE_LOCK): run this step eagerly
            return None
        try:
            return self._run(x, kvs, checked)
        finally:
            if checked:
                COMPILE_LOCK.release()

    def _run(self, x: torch.Tensor, kvs: list[SessionKV], checked: bool) -> torch.Tensor | None:
        n = len(kvs)
        pad = bucket_of(n) - n
        all_kvs = kvs + self.scratch[:pad]
        for kv in kvs:
            kv.reserve(kv.length + SLACK)
        if pad:
            x = torch.cat([x, x.new_zeros(pad, 1, x.shape[-1])], 0)
        position_ids = torch.tensor([[kv.length] for kv in all_kvs], device=x.device)
        cache = RowsCache(all_kvs, self.span.start, self.span.end, True)
        stance = torch.compiler.set_stance("fail_on_recompile") if checked else contextlib.nullcontext()
        try:
            with torch.inference_mode(), stance, _no_duck_shapes():
                out = self.compiled._fn(x.clone(memory_format=torch.contiguous_format), position_ids, cache, None,
                                        self.span.start, self.span.end)
        except RuntimeError as e:
            if not checked or not str(e).startswith(RECOMPILE_REFUSED):
                raise
            self.fallbacks += 1
            if self.fallbacks >= MAX_FALLBACKS:
                self.ready.clear()
            event(log, "compiled_batch_fallback", level=logging.WARNING, sessions=n, fallbacks=self.fallbacks)
            return None
        if checked:
            self.steps += 1
        return out[:n]

    def warm_up(self, bucket: int) -> float:
        """Compile `bucket`'s graph (seconds): sessions of different lengths and capacities."""
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(bucket)
        kvs = []
        for i in range(bucket):
            kv = self._new_kv(4096)
            kv.reserve(20 + 7 * i + SLACK)
            kv.length = 20 + 7 * i
            kvs.append(kv)
        x = torch.randn(bucket, 1, self.span.hidden_size, generator=gen).to(self.span.device, self.span.dtype)
        self.run(x, kvs, checked=False)
        return time.perf_counter() - t0

    def time_bucket(self, bucket: int, steps: int = 12) -> tuple[float, float]:
        """Median seconds of an eager and a compiled batched step of `bucket` sessions, interleaved."""
        from hoster.batched import step_batched  # deferred: the eager batched path, only to time it

        class _S:  # the fields step_batched reads of a session
            def __init__(self, kv):
                self.cache, self.length, self.adapter = kv, kv.length, None

        class _T:
            def __init__(self, session, hidden):
                self.session, self.hidden, self.position = session, hidden, session.cache.length
                self.start, self.end = session.cache.start, session.cache.end

        kvs = []
        for i in range(bucket):
            kv = self._new_kv(4096)
            kv.reserve(20 + 5 * i + SLACK)
            kv.length = 20 + 5 * i
            kvs.append(kv)
        sessions = [_S(kv) for kv in kvs]
        eager, comp = [], []
        for i in range(steps + 2):
            x = torch.randn(bucket, 1, self.span.hidden_size).to(self.span.device, self.span.dtype)
            t0 = time.perf_counter()
            step_batched(self.span, [_T(s, x[j:j + 1]) for j, s in enumerate(sessions)])
            t1 = time.perf_counter()
            self.run(x, kvs, checked=False)
            for kv in kvs:
                kv.length += 1
            t2 = time.perf_counter()
            if i >= 2:
                eager.append(t1 - t0)
                comp.append(t2 - t1)
        return sorted(eager)[len(eager) // 2], sorted(comp)[len(comp) // 2]
