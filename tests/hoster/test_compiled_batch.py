"""Batched decode steps through compiled bucket graphs (hoster/compiled_batch.py), on by default in
auto mode and compiled on demand: equal to the eager batched step (padding included), never
overlapping a compilation on another thread (torch's compile stance is process-wide:
hoster.compiled.COMPILE_LOCK), and a failed bucket compile is not remembered as "no bucket wins".

Two blocks of the tiny Llama: the same graphs as a whole span at a fraction of inductor's time.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest
import torch
from backend_steps import seeded, step

from hoster import compile_auto, compiled_batch
from hoster.backend import Backend, _Task
from hoster.batched import step_batched
from hoster.cache import KVCache
from hoster.compile_auto import Choices, shape_key
from hoster.compiled import COMPILE_LOCK, CompiledDecode, compiling
from hoster.compiled_batch import CompiledBatches
from subnet.model.blocks import is_hub_kernel_wrapper, load_blocks, unwrap_hub_kernel_forwards

pytestmark = pytest.mark.slow

END = 2


@pytest.fixture(scope="module")
def span(tiny_llama):
    return load_blocks(tiny_llama, 0, END, progress=False, linear_kernel="onednn")  # the default kernel


@pytest.fixture(scope="module")
def backends(span):
    """Two eager backends over the same weights: one holds the sessions stepped through the graphs,
    the other their eager twins."""
    pair = Backend(span), Backend(span)
    yield pair
    for b in pair:
        b.shutdown()


def _sessions(backend: Backend, lengths: list[int]) -> list:
    out = []
    for i, n in enumerate(lengths):
        s = backend.open_session(0, END, 1, 256)
        step(backend, s, seeded(1, n, 64, seed=10 + i), 0)  # eager prefill on the backend's own thread
        out.append(s)
    return out


def _tasks(sessions: list, xs: list[torch.Tensor]) -> list[_Task]:
    return [_Task(concurrent.futures.Future(), x, 0, END, s, s.length) for s, x in zip(sessions, xs)]


def test_bucket_graph_equals_the_eager_batched_step_with_padding(span, backends):
    """Three sessions of different lengths take bucket 4 (one scratch row of padding) step after step;
    every output equals the eager batched step of their twins within float32 rounding."""
    graphs = CompiledBatches(CompiledDecode(span))
    graphs.warm_up(4)
    graphs.ready.add(4)
    lengths = [5, 9, 13]
    compiled, eager = _sessions(backends[0], lengths), _sessions(backends[1], lengths)
    for i in range(6):
        xs = [seeded(1, 1, 64, seed=100 * i + j) for j in range(3)]
        tc, te = _tasks(compiled, xs), _tasks(eager, xs)
        assert graphs.serves(tc)
        got, want = step_batched(span, tc, graphs), step_batched(span, te)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
    assert graphs.steps == 6 and graphs.fallbacks == 0 and graphs.busy == 0
    assert [s.length for s in compiled] == [n + 6 for n in lengths] == [s.length for s in eager]
    assert not graphs.serves(tc[:1])  # one session: not a bucket (the one-session graph's job)
    for s in compiled:
        backends[0].close_session(s)
    for s in eager:
        backends[1].close_session(s)


def test_background_compilation_beside_serving_steps_of_the_same_span(span, backends):
    """The hoster's default (hoster.compile_auto): a thread compiles while the compute thread keeps
    stepping a session of the same span. First the one-session graph (every step eager meanwhile:
    the `kernels` wrapper that transformers puts on attention made dynamo's trace diverge here,
    subnet.model.blocks.unwrap_hub_kernel_forwards), then a bucket while steps take the one-session
    graph whenever they get COMPILE_LOCK (else torch's process-wide "fail_on_recompile" stance of a
    compiled step would refuse the bucket's compilation)."""
    torch.compiler.reset()  # graphs of this shape compiled earlier in this process would be reused untraced
    one = CompiledDecode(span)
    graphs = CompiledBatches(one)
    (s,) = _sessions(backends[0], [6])
    kv, cache = s.cache, KVCache(s.cache)

    def serve_while(job) -> list[Exception]:
        done, errors = threading.Event(), []

        def run() -> None:
            try:
                with compiling():
                    job()
            except Exception as e:  # the assertion below reports it
                errors.append(e)
            finally:
                done.set()

        t = threading.Thread(target=run)
        t.start()
        deadline, steps = time.monotonic() + 600, 0
        while not done.is_set() and time.monotonic() < deadline and steps < 1_000_000:
            x = seeded(1, 1, 64, seed=steps)
            if kv.length + 4 > kv.max_length:
                kv.crop(6)
            kv.reserve(kv.length + 1)
            with torch.inference_mode():  # as Backend._run: the graph where it serves the step, else eagerly
                out = one(x, cache, 0, END) if one.serves(x, kv, 0, END) else None
                if out is None:
                    span(x, cache=cache)
            kv.length += 1
            steps += 1
            time.sleep(0.002)  # leave the compiler a core: the race needs overlap, not a saturated loop
        t.join(timeout=600)
        assert done.is_set() and steps > 0
        return errors

    assert serve_while(lambda: one.warm_up(lambda n: backends[0]._new_kv(0, END, 1, n), KVCache)) == []
    assert one.ready and one.steps == 0
    assert serve_while(lambda: graphs.warm_up(2)) == []
    assert one.busy > 0 and one.fallbacks == 0  # eager while the bucket compiled, never refused a guard
    assert not COMPILE_LOCK.locked()
    backends[0].close_session(s)


def test_spans_carry_no_hub_kernel_wrappers(span):
    """transformers decorates attention with `kernels.use_kernelized_func`; a loaded span runs the plain
    forward (no per-call context-variable traffic, nothing for a background trace to race with)."""
    wrapped = [m for m in span.modules() if is_hub_kernel_wrapper(type(m).forward)]
    assert wrapped, "transformers no longer wraps attention: unwrap_hub_kernel_forwards can go"
    for m in wrapped:
        assert m.forward.__func__ is type(m).forward.__wrapped__
    assert unwrap_hub_kernel_forwards(span) == len(wrapped)  # idempotent


def test_buckets_compile_on_demand_and_a_failed_compile_is_not_remembered(tiny_llama, tmp_path, monkeypatch):
    """Auto mode (no flag) serves the one-session graph and announces its path without compiling any
    bucket; a bucket is compiled and timed once DEMAND_STEPS eager batched steps of its size were
    served, then batched steps take it, also after the one-session path turned eager (a re-timing
    once left asked-for buckets `compiling` forever, and a benchmark waiting on them hung). A bucket
    measured slower on a quiet start is never asked for again; a bucket compile that fails leaves
    batched steps eager and is not remembered; the switch takes on/off and refuses anything else."""
    monkeypatch.delenv(compile_auto.ENV_BUCKETS, raising=False)
    monkeypatch.setattr(compile_auto, "MIN_GAIN", 0.0)  # the tiny model: the choice itself is tested elsewhere
    monkeypatch.setattr(compiled_batch, "BUCKETS", (2,))  # one bucket is enough to see the mechanism
    monkeypatch.setattr(compile_auto, "RETIME_DELAYS", ())  # timed again under load: test_compile_retime
    span = load_blocks(tiny_llama, 0, END, progress=False, linear_kernel="torch")
    threads_before = torch.get_num_threads()
    auto = Backend(span, compile_decode="auto")
    bucket_started, release = threading.Event(), threading.Event()
    real_warm_up = CompiledBatches.warm_up

    def held_warm_up(self, bucket):
        bucket_started.set()
        assert release.wait(300)
        return real_warm_up(self, bucket)

    monkeypatch.setattr(CompiledBatches, "warm_up", held_warm_up)
    try:
        choices = Choices(tmp_path)
        key = shape_key(span.config, 0, END, span.dtype)
        job = auto.start_auto_compile(key, choices)
        assert job.done.wait(900) and job.record["path"] == "compiled", job.record
        assert auto.decode_path == "compiled" and job.record["buckets"] == [] and not job.batches.ready
        assert job.bucket_states() == {2: "eager"}
        sessions = _sessions(auto, [5, 7])

        def batched_step(i: int) -> None:  # at the count the graphs were built with, as the compute thread runs it
            auto.threads.use(2)  # (hoster.decode_threads: a graph guards on its thread count)
            step_batched(span, _tasks(sessions, [seeded(1, 1, 64, seed=100 + 2 * i + j) for j in range(2)]),
                         job.batches)

        for i in range(compiled_batch.DEMAND_STEPS - 1):
            batched_step(i)
        time.sleep(0.5)
        assert not bucket_started.is_set() and job.batches.demand == {2: compiled_batch.DEMAND_STEPS - 1}
        job.compiled.ready = False  # as if a re-timing had turned the one-session path to eager
        batched_step(99)  # the DEMAND_STEPS-th eager batched step of 2 sessions asks for bucket 2
        assert bucket_started.wait(300), job.record  # timed on its own, whatever the one-session verdict
        assert auto.decode_path == "eager"  # the announced path never waits for a bucket
        assert job.bucket_states() == {2: "compiling"}
        release.set()
        deadline = time.monotonic() + 900
        while job.record.get("buckets") != [2] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert job.record["buckets"] == [2] and job.batches.ready == {2}, job.record
        assert choices.get(key)["buckets"] == [2]
        batched_step(100)
        assert job.batches.steps == 1 and job.bucket_states() == {2: "served"}  # now the graph serves it

        monkeypatch.setattr(compile_auto, "MIN_GAIN", 1.03)
        job.record["bucket_timings"]["2"] = {"eager_ms": 1.0, "compiled_ms": 2.0}  # as if slower, measured quietly
        job._prepare_buckets(dict(job.record, buckets=[], buckets_quiet=True))
        assert job.batches.skip == {2} and job.bucket_states() == {2: "slower"}
        for i in range(compiled_batch.DEMAND_STEPS + 1):
            job.batches.note_eager(_tasks(sessions, [seeded(1, 1, 64, seed=i)] * 2))
        assert not job.batches.requested and not job.batches.demand

        def broken(self, bucket):
            raise RuntimeError("inductor fell over")

        monkeypatch.setattr(CompiledBatches, "warm_up", broken)
        job.record = {"path": "compiled", "buckets": []}
        job._compiled_buckets.clear()  # as on a new start: compile the bucket again
        job._buckets([2])
        assert job.record["buckets"] == [] and "inductor fell over" in job.record["bucket_error"]
        job.batches.skip.clear()
        assert job.bucket_states() == {2: "failed"}
        for off in ("0", "off", "False"):
            monkeypatch.setenv(compile_auto.ENV_BUCKETS, off)
            assert not compile_auto.buckets_enabled()
        monkeypatch.setenv(compile_auto.ENV_BUCKETS, "no")
        with pytest.raises(ValueError, match="MESH_NODE_COMPILE_BUCKETS='no'"):
            compile_auto.buckets_enabled()
    finally:
        torch.set_num_threads(threads_before)
        auto.shutdown()


def test_a_bucket_is_asked_for_only_when_its_steps_are_a_real_share_of_the_batched_steps(monkeypatch):
    """Stragglers (a few rounds of 4 among hundreds of compiled rounds of 8) do not start a compile in the
    middle of serving; the same size asked for often enough does."""
    def batches(compiled_steps: int) -> CompiledBatches:
        cb = CompiledBatches.__new__(CompiledBatches)  # the demand counting only: no span, no graphs
        cb.ready, cb.skip, cb.requested, cb.demand, cb.steps = {8}, set(), set(), {}, compiled_steps
        cb.on_demand = asked.append
        return cb

    monkeypatch.setattr(CompiledBatches, "fits", lambda self, batch: True)
    four = [object()] * 4
    asked: list[int] = []
    fresh = batches(0)
    for _ in range(compiled_batch.DEMAND_STEPS):
        fresh.note_eager(four)
    assert asked == [4] and fresh.requested == {4}  # nothing else seen: DEMAND_STEPS decide
    asked.clear()
    busy = batches(200)  # 200 steps already served by the bucket-8 graph
    for _ in range(compiled_batch.DEMAND_STEPS):
        busy.note_eager(four)
    assert asked == [] and busy.demand == {4: compiled_batch.DEMAND_STEPS}  # 16 of 216: stragglers
    while not asked and busy.demand[4] < 100:
        busy.note_eager(four)
    assert asked == [4] and busy.demand[4] == 23  # 23 of 223 >= 10 %
