"""How many intra-op threads small steps use: the fewest that are as fast as all of them.

A decode step multiplies one row (or a few) by every weight of the span: it is bound by memory
bandwidth and per-op overhead, not by arithmetic, and on a small model a second OpenMP thread
buys nothing (model a, 12 blocks, one row, interleaved: 19.5 ms on 1 thread, 20.3 ms on 2; model b:
56.0 vs 41.5 ms, so there it pays). A thread that does not make the step faster still wakes and
takes a core from whatever shares the machine: the client, p2pd, other hosters. Three model (a)
hosters on two cores with one thread each generated 10 % faster for one session and 9 % for eight
than with two (`benchmarks.generation`'s chain; docs/BENCHMARKS.md).

So the compile job (hoster.compile_auto) times an eager one-position step of the span at each
candidate count, interleaved, before it compiles (inductor bakes the thread count into the code it
generates), and the compute thread runs steps of at most SMALL_STEP_ROWS rows x positions on the
fewest threads within TOLERANCE of the fastest; prefill and other large steps keep every thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import torch

from hoster import cpu_contention
from subnet.logs import event

log = logging.getLogger(__name__)

TOLERANCE = 1.10  # more threads must be at least this much faster: each takes a core from the rest of the machine
SMALL_STEP_ROWS = 8  # rows x positions of a step that counts as small (decode, a batch of 8, a short draft)
ROUNDS, STEPS = 24, 2  # interleaved finely (a burst of load hits every count alike): rounds of STEPS steps each


def candidates(max_threads: int) -> list[int]:
    """Thread counts worth timing: 1, the powers of two below `max_threads`, and `max_threads`."""
    counts, n = {max(1, max_threads)}, 1
    while n < max_threads:
        counts.add(n)
        n *= 2
    return sorted(counts)


def choose(medians: dict[int, float], tolerance: float = TOLERANCE) -> int:
    """The fewest threads whose median step time is within `tolerance` of the fastest count's."""
    if not medians:
        raise ValueError("no timings to choose from")
    best = min(medians.values())
    return min(n for n, t in medians.items() if t <= best * tolerance)


def remembered(record: dict | None, max_threads: int) -> int | None:
    """The count a quiet earlier start of this shape chose (its `decode_choices.json` record), if any."""
    chosen = (record or {}).get("decode_threads")
    if (record or {}).get("threads_quiet") and isinstance(chosen, int) and 1 <= chosen <= max_threads:
        return chosen
    return None


def time_counts(step: Callable[[], None], counts: list[int], rounds: int = ROUNDS,
                steps: int = STEPS) -> dict[int, float]:
    """Median seconds of `step` at each thread count, interleaved (a load that comes and goes slows
    every count alike). Sets the calling thread's count for each and restores it after."""
    before = torch.get_num_threads()
    times: dict[int, list[float]] = {n: [] for n in counts}
    try:
        for _ in range(rounds):
            for n in counts:
                torch.set_num_threads(n)
                step()  # the first step after a switch wakes (or parks) the pool: not timed
                for _ in range(steps):
                    t0 = time.perf_counter()
                    step()
                    times[n].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return {n: sorted(v)[len(v) // 2] for n, v in times.items()}


def span_step(span, new_kv: Callable[[int], object], new_cache: Callable[[object], object]) -> Callable[[], None]:
    """An eager one-position step of the whole span on a scratch cache of 16 positions (kept at 16)."""
    kv = new_kv(64)
    cache = new_cache(kv)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 17, span.hidden_size, generator=gen).to(span.device, span.dtype)
    kv.reserve(17)
    with torch.inference_mode():
        span(x[:, :16], cache=cache)
    kv.length = 16

    def step() -> None:
        with torch.inference_mode():
            span(x[:, 16:], cache=cache)  # writes position 16 again each time: the length never moves

    return step


def choose_threads(switch: ThreadSwitch, cached: dict | None, make_step: Callable[[], Callable[[], None]]) -> dict:
    """Choose `switch.decode` and set the calling thread to it (the compile job's thread, which then compiles
    and times at that count); a count chosen on a quiet earlier start of this shape is taken as it is. Returns
    what the job's record keeps (fields of `decode_choices.json`)."""
    if switch.max_threads <= 1:
        return {}
    chosen = remembered(cached, switch.max_threads)
    if chosen is not None:
        timings, quiet = (cached or {}).get("thread_timings"), True
    else:
        before = cpu_contention.sample()
        medians = time_counts(make_step(), candidates(switch.max_threads))
        quiet = cpu_contention.others_load(before, cpu_contention.sample()) <= cpu_contention.MAX_OTHER_LOAD
        chosen, timings = choose(medians), {str(n): round(t * 1e3, 3) for n, t in medians.items()}
    torch.set_num_threads(chosen)
    switch.decode = chosen
    event(log, "decode_threads_chosen", threads=chosen, of=switch.max_threads, quiet=quiet, timings_ms=timings)
    return {"decode_threads": chosen, "thread_timings": timings, "threads_quiet": quiet}


def retime_threads(switch: ThreadSwitch, compiled, new_kv, new_cache) -> dict:
    """Time a count chosen under load again (hoster.compile_auto's re-timing, once the hoster is idle). A new
    count needs its own graph (dynamo guards on the count): compiled before the lock is released, while
    the compute thread's steps run eagerly (hoster.compiled.COMPILE_LOCK)."""
    from hoster.compiled import compiling  # deferred: only hosters that compile re-time

    with compiling():
        before = switch.decode
        record = choose_threads(switch, None, lambda: span_step(compiled.span, new_kv, new_cache))
        if switch.decode != before:
            compiled.warm_up(new_kv, new_cache)
    return record


class ThreadSwitch:
    """The compute thread's intra-op thread count: `decode` for small steps once chosen, else all.

    torch's count is per OS thread under OpenMP, so the thread that runs the steps sets it, only when it
    changes (a switch costs ~50 us). A compiled graph guards on the count it was built with: called at
    another count it would recompile (refused while serving), so small steps always run at `decode`."""

    def __init__(self, max_threads: int | None = None):
        self.max_threads = max_threads or torch.get_num_threads()
        self.decode: int | None = None  # chosen by hoster.compile_auto; None: every thread
        self._set = threading.local()  # the count this switch last set on each thread

    def use(self, rows: int) -> None:
        """Before a step of `rows` rows x positions, on the thread that runs it."""
        want = self.decode if self.decode is not None and rows <= SMALL_STEP_ROWS else self.max_threads
        if want != getattr(self._set, "count", None):
            torch.set_num_threads(want)
            self._set.count = want

    @property
    def announced(self) -> int:
        """What the hoster announces: the small-step count once chosen, else every thread."""
        return self.decode or self.max_threads
