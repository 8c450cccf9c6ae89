"""Small steps' thread count (hoster.decode_threads): the choice, the compute thread, the compile job."""

from __future__ import annotations

import concurrent.futures
import threading

import pytest
import torch
from backend_steps import seeded, step
from hypothesis import given, strategies as st

import hoster.backend as backend_module
from hoster import compile_auto, cpu_contention, decode_threads
from hoster.backend import Backend, _Task
from hoster.compile_auto import Choices, shape_key
from hoster.compiled import CompiledDecode
from hoster.decode_threads import ThreadSwitch, candidates, choose, remembered
from subnet.model.blocks import load_blocks
from subnet.swarm.announcements import Announcement


def test_candidates_are_one_the_powers_of_two_and_all():
    assert candidates(1) == [1]
    assert candidates(2) == [1, 2]
    assert candidates(6) == [1, 2, 4, 6]
    assert candidates(8) == [1, 2, 4, 8]


@given(st.dictionaries(st.integers(1, 64), st.floats(1e-4, 1.0), min_size=1))
def test_the_choice_is_the_fewest_threads_within_the_tolerance(medians):
    chosen = choose(medians)
    best = min(medians.values())
    assert medians[chosen] <= best * decode_threads.TOLERANCE
    assert all(n >= chosen for n, t in medians.items() if t <= best * decode_threads.TOLERANCE)


def test_a_tie_goes_to_fewer_threads_and_a_real_gain_to_more():
    assert choose({1: 0.0195, 2: 0.0203}) == 1  # model a, 12 blocks, measured: a second thread buys nothing
    assert choose({1: 0.0560, 2: 0.0415}) == 2  # model b: it does
    with pytest.raises(ValueError):
        choose({})


def test_only_a_quiet_remembered_count_within_the_machine_is_taken():
    assert remembered({"decode_threads": 1, "threads_quiet": True}, 2) == 1
    assert remembered({"decode_threads": 1, "threads_quiet": False}, 2) is None  # timed under load: again
    assert remembered({"decode_threads": 4, "threads_quiet": True}, 2) is None  # another machine's count
    assert remembered({"decode_threads": "1", "threads_quiet": True}, 2) is None
    assert remembered(None, 2) is None and remembered({}, 2) is None


def test_the_switch_sets_the_calling_threads_count_only_for_small_steps():
    seen = []

    def compute():
        switch = ThreadSwitch(max_threads=2)
        switch.use(1)
        seen.append(torch.get_num_threads())  # nothing chosen yet: every thread
        switch.decode = 1
        for rows in (1, 8, 9, 512):
            switch.use(rows)
            seen.append(torch.get_num_threads())

    t = threading.Thread(target=compute)
    t.start()
    t.join(30)
    assert seen == [2, 1, 1, 2, 2]


def test_the_compute_thread_runs_decode_on_the_chosen_count_and_prefill_on_all(tiny_llama, monkeypatch):
    """One-session and batched decode steps on `decode` threads; a prompt on every thread."""
    span = load_blocks(tiny_llama, 0, 4, progress=False, linear_kernel="torch")
    backend = Backend(span)
    seen: list[tuple[str, int, int]] = []
    run, batched = backend._run, backend_module.step_batched

    def counted_run(hidden, *args, **kwargs):
        seen.append(("one", hidden.shape[1], torch.get_num_threads()))
        return run(hidden, *args, **kwargs)

    def counted_batched(span, batch, graphs=None):
        seen.append(("batch", len(batch), torch.get_num_threads()))
        return batched(span, batch, graphs)

    monkeypatch.setattr(backend, "_run", counted_run)
    monkeypatch.setattr(backend_module, "step_batched", counted_batched)
    backend.threads = ThreadSwitch(max_threads=2)
    backend.threads.decode = 1
    try:
        a, b = backend.open_session(0, 4, 1, 64), backend.open_session(0, 4, 1, 64)
        step(backend, a, seeded(1, 12, 64, seed=1), 0)
        step(backend, b, seeded(1, 12, 64, seed=2), 0)
        step(backend, a, seeded(1, 1, 64, seed=3), 12)
        tasks = [_Task(concurrent.futures.Future(), seeded(1, 1, 64, seed=4 + i), 0, 4, s, s.length)
                 for i, s in enumerate((a, b))]
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # a batched round, run by a thread of its own
            pool.submit(backend._step_batched, tasks).result(60)  # (whether two steps meet in one round is timing)
    finally:
        backend.shutdown()
    assert ("one", 12, 2) in seen and ("one", 1, 1) in seen, seen
    assert ("batch", 2, 1) in seen, seen
    assert all(n == 2 for kind, size, n in seen if kind == "one" and size > 8), seen


def test_the_compile_job_chooses_before_compiling_and_a_quiet_choice_is_remembered(tiny_llama, tmp_path,
                                                                                   monkeypatch):
    """The job times the counts, sets its own thread to the choice before compiling (inductor builds the
    count into the graph), tells the compute thread, records and saves it; the next start of the shape takes
    the saved count without timing again."""
    monkeypatch.setenv("MESH_NODE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(compile_auto.ENV_BUCKETS, "0")
    monkeypatch.setattr(compile_auto, "MIN_GAIN", 0.0)
    monkeypatch.setattr(cpu_contention, "MAX_OTHER_LOAD", float("inf"))  # quiet whatever else runs
    timed: list[list[int]] = []
    monkeypatch.setattr(decode_threads, "time_counts",
                        lambda step, counts: timed.append(counts) or {1: 0.0100, 2: 0.0098})  # a tie
    compiled_at: list[int] = []
    warm_up = CompiledDecode.warm_up

    def counted_warm_up(self, *args, **kwargs):
        compiled_at.append(torch.get_num_threads())
        return warm_up(self, *args, **kwargs)

    monkeypatch.setattr(CompiledDecode, "warm_up", counted_warm_up)
    span = load_blocks(tiny_llama, 0, 2, progress=False, linear_kernel="torch")
    key = shape_key(span.config, 0, 2, span.dtype)
    for start in ("first", "second"):
        backend = Backend(span, compile_decode="auto")
        backend.threads = ThreadSwitch(max_threads=2)
        try:
            job = backend.start_auto_compile(key, Choices())
            assert job.done.wait(900), start
            assert job.record["decode_threads"] == 1 and job.record["threads_quiet"], job.record
            assert backend.threads.decode == 1 and backend.threads.announced == 1
            assert compiled_at[-1] == 1, compiled_at
        finally:
            backend.shutdown()
    assert timed == [[1, 2]]  # the second start took the saved count
    assert Choices().get(key)["decode_threads"] == 1


def test_announced_decode_threads_are_informational_and_optional():
    payload = Announcement(peer_id="p", model="m", start=0, end=4, throughput=10.0, cache_tokens_free=8,
                           cache_tokens_total=8, version="v", state="online", num_blocks=8, hidden_size=64,
                           dtype="float32", decode_threads=1).to_payload()
    assert Announcement.from_payload(payload).decode_threads == 1
    assert Announcement.from_payload({k: v for k, v in payload.items() if k != "decode_threads"}).decode_threads == 0
    with pytest.raises(ValueError, match="decode_threads"):
        Announcement.from_payload({**payload, "decode_threads": "1"})


def test_a_count_chosen_under_load_is_timed_again_and_served_by_a_graph_of_its_own(tiny_llama, tmp_path,
                                                                                  monkeypatch):
    """Timed while other processes kept the cores busy, the count is timed again once the hoster is idle; a
    new count gets its own graph before small steps switch to it (dynamo guards on the count: without it
    every compiled step would fall back), and the quiet timing settles the choice."""
    monkeypatch.setenv("MESH_NODE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(compile_auto.ENV_BUCKETS, "0")
    monkeypatch.setattr(compile_auto, "MIN_GAIN", 0.0)
    monkeypatch.setattr(compile_auto, "RETIME_DELAYS", (0.01,))
    monkeypatch.setattr(compile_auto, "IDLE_POLL", 0.01)
    loads = [9.0]  # the first thread timing under load; every later timing quiet
    monkeypatch.setattr(cpu_contention, "others_load", lambda before, after: loads.pop(0) if loads else 0.0)
    timings = [{1: 0.0100, 2: 0.0100}, {1: 0.0200, 2: 0.0100}]  # a tie under load; quietly, 2 threads win
    monkeypatch.setattr(decode_threads, "time_counts", lambda step, counts: timings.pop(0))
    span = load_blocks(tiny_llama, 0, 2, progress=False, linear_kernel="torch")
    backend = Backend(span, compile_decode="auto")
    backend.threads = ThreadSwitch(max_threads=2)
    try:
        job = backend.start_auto_compile(shape_key(span.config, 0, 2, span.dtype), Choices())
        assert job.done.wait(900)
        job._thread.join(300)  # settled: the job ends (no buckets here); a re-timing under way holds the lock
        assert not job._thread.is_alive() and job.settled, job.record
        assert job.record["decode_threads"] == 2 and job.record["threads_quiet"], job.record
        assert backend.threads.decode == 2 and not timings
        s = backend.open_session(0, 2, 1, 64)
        step(backend, s, seeded(1, 4, 64, seed=1), 0)
        before = backend.compiled.steps
        for i in range(4):
            step(backend, s, seeded(1, 1, 64, seed=2 + i), s.length)
        assert backend.compiled.steps - before == 4 and backend.compiled.fallbacks == 0
    finally:
        backend.shutdown()


def test_a_hoster_whose_quiet_choice_was_eager_takes_the_remembered_count(tiny_llama, tmp_path, monkeypatch):
    """No compile job runs where a quiet start measured eager faster; the count that start chose still
    stands (and is announced), instead of every thread."""
    from hoster.server import Hoster
    from subnet.model.blocks import load_config

    monkeypatch.setenv("MESH_NODE_CACHE_DIR", str(tmp_path))
    key = shape_key(load_config(tiny_llama), 0, 8, torch.float32, None)
    Choices().put(key, {"path": "eager", "quiet": True, "decode_threads": 1, "threads_quiet": True})
    h = Hoster(tiny_llama, start=0, end=8, compile_mode="auto", throughput=10.0, progress=False).start()
    try:
        assert h.backend.auto is None and h.backend.threads.decode == 1
        assert h.info()["decode_threads"] == 1
    finally:
        h.shutdown()


def test_the_hoster_is_idle_for_re_timings_only_after_a_quiet_while(tiny_llama, monkeypatch):
    """A gap between one client's requests is not idle: re-timings (which hold compiled steps off and take
    a core) wait until no session is open and nothing was queued for IDLE_QUIET seconds."""
    import time

    monkeypatch.setattr(backend_module, "IDLE_QUIET", 0.3)
    backend = Backend(load_blocks(tiny_llama, 0, 2, progress=False, linear_kernel="torch"))
    try:
        s = backend.open_session(0, 2, 1, 64)
        step(backend, s, seeded(1, 4, 64, seed=1), 0)
        time.sleep(0.4)
        assert not backend.idle()  # quiet long enough, but a session is open
        backend.close_session(s)
        assert backend.idle()
        backend.run_span(seeded(1, 2, 64, seed=2))  # a forward (a probe) is work too
        assert not backend.idle()
        time.sleep(0.4)
        assert backend.idle()
    finally:
        backend.shutdown()
