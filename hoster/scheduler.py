"""What the compute thread runs next: inference steps first, stateless forwards in small units.

The backend's one compute thread used to take everything queued as one round, forwards
and steps alike, and ran each forward whole: 40 large forwards from one peer made another
peer's decode step wait for all of them (issue 17: 13 ms -> 43 s). Now:

- `TaskQueue` has two lanes. The step lane holds inference steps, cache drops and the stop
  sentinel (FIFO, exactly what the old single queue did for them, so decode batching is
  unchanged). The forward lane holds stateless forwards (the `forward` RPC and probes,
  `Backend.run_span`) per calling peer, started round-robin over peers: a peer with many
  queued forwards gets one turn like a peer with one.
- One forward at a time is in progress, and it runs as `forward_units`: a generator that
  computes one unit of positions per call. The compute thread alternates: one round of
  every waiting step (batched as before), then ONE forward unit, then steps again. A step
  therefore waits for at most one forward unit, and forwards still progress while sessions
  are busy (no starvation either way). Scratch memory is one forward's.
- A unit is sized by time (`UnitPacer`): while sessions are active, about `UNIT_STEPS`
  one-session decode steps' worth of positions (at least `MIN_UNIT`, measured cost per
  position), so a flooded step takes about (1 + UNIT_STEPS) times its usual time on any
  model; with no active session a unit is `MAX_UNIT` positions.
- Likewise at most one long step (more than `PREFILL_CHUNK` positions, run alone in
  chunks) is taken per round; the others wait at the front of the step lane, so decode
  steps arriving meanwhile go between them.

A forward that fits one unit (a probe on an idle hoster: up to `MAX_UNIT` positions) runs
through exactly the old path, `span(x)`. Larger ones are split into row groups
(rows are independent sequences) or, for sequences longer than a unit, into position
chunks through a scratch K/V cache, as a long inference step is: equal up to float rounding.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Generator
from typing import Any

import torch

from hoster.cache import KVCache, SessionKV
from subnet.model.memory import trim

MAX_UNIT = 256  # positions (rows x length) through the whole span: the largest forward unit
MIN_UNIT = 16  # position-layers: the smallest unit, however slow a position is
UNIT_STEPS = 2.0  # while sessions are active a unit costs about this many one-session decode steps
MIN_UNIT_SECONDS = 0.005
TRIM_EVERY = 0.1  # seconds of forward work between malloc_trim calls


class TaskQueue:
    """The compute thread's queue: a FIFO step lane and a per-peer round-robin forward lane.

    `put`/`qsize` keep `queue.Queue`'s names (metrics read `qsize`); `get`/`get_nowait` only
    ever return step-lane items, `wait` blocks until either lane has something.
    A task is step-lane work when it is None (stop) or has a `session`; else it is a forward
    of `task.peer`.
    """

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._steps: deque = deque()
        self._forwards: dict[str, deque] = {}  # peer -> its forwards; dict order is the rotation
        self._n_forwards = 0

    def put(self, task: Any) -> None:
        with self._cv:
            if task is None or task.session is not None:
                self._steps.append(task)
            else:
                self._forwards.setdefault(task.peer, deque()).append(task)
                self._n_forwards += 1
            self._cv.notify()

    def put_front(self, tasks: list) -> None:
        """Return step-lane tasks taken this round to the front, in their order."""
        with self._cv:
            self._steps.extendleft(reversed(tasks))
            self._cv.notify()

    def qsize(self) -> int:
        return len(self._steps) + self._n_forwards

    def forwards_waiting(self) -> int:
        return self._n_forwards

    def get(self, timeout: float | None = None) -> Any:
        """Next step-lane item; queue.Empty after `timeout` s (None: wait for ever)."""
        with self._cv:
            if not self._cv.wait_for(lambda: self._steps, timeout):
                raise queue.Empty
            return self._steps.popleft()

    def get_nowait(self) -> Any:
        with self._cv:
            if not self._steps:
                raise queue.Empty
            return self._steps.popleft()

    def wait(self) -> None:
        """Block until either lane has something."""
        with self._cv:
            self._cv.wait_for(lambda: self._steps or self._n_forwards)

    def next_forward(self) -> Any | None:
        """The oldest forward of the peer whose turn it is (that peer then goes last), or None."""
        with self._cv:
            if not self._forwards:
                return None
            peer = next(iter(self._forwards))
            tasks = self._forwards.pop(peer)
            task = tasks.popleft()
            if tasks:
                self._forwards[peer] = tasks
            self._n_forwards -= 1
            return task

    def drain(self) -> list:
        """Everything still queued (shutdown)."""
        with self._cv:
            out = list(self._steps) + [t for q in self._forwards.values() for t in q]
            self._steps.clear()
            self._forwards.clear()
            self._n_forwards = 0
            return out


class UnitPacer:
    """How much the next forward unit computes: about `budget()` seconds of work.

    Work is counted in position-layers (one position through one block); its cost is
    measured on the units run (moving average). `budget()` is the backend's: a couple of
    decode steps while sessions are active, unbounded when idle (then a unit is `MAX_UNIT`
    positions through the whole span, and a forward of at most that runs whole).
    While forwards run, `malloc_trim` every `TRIM_EVERY` s hands freed activations back.
    """

    def __init__(self, budget: Callable[[], float]):
        self.budget = budget
        self.per_position: float | None = None  # seconds, measured
        self._trimmed = 0.0
        self.trim_seconds = 0.0

    def work(self, layers: int) -> int:
        """Position-layers (positions x blocks) the next unit may compute."""
        budget = self.budget()
        if budget == float("inf"):
            return MAX_UNIT * layers
        if self.per_position is None:
            return MIN_UNIT
        return int(min(MAX_UNIT * layers, max(MIN_UNIT, budget / self.per_position)))

    def timed(self, work: int, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        now = time.perf_counter()
        cost = (now - t0) / work
        self.per_position = cost if self.per_position is None else 0.7 * self.per_position + 0.3 * cost
        if now - self._trimmed > TRIM_EVERY:
            self._trimmed = now
            t1 = time.perf_counter()
            trim()
            self.trim_seconds += time.perf_counter() - t1
        return out


def forward_units(span, hidden: torch.Tensor, start: int, end: int,
                  new_kv: Callable[[int, int, int, int], SessionKV],
                  pacer: UnitPacer) -> Generator[None, None, torch.Tensor]:
    """Stateless forward of blocks [start, end) in units of about `pacer.work()` position-layers.

    Yields after every unit but the last; returns the output (cpu, input dtype).
    """
    x = hidden.to(span.device, span.dtype)
    b, n, layers = x.shape[0], x.shape[1], end - start
    work = pacer.work(layers)
    if b * n * layers <= work:  # one unit: the plain path
        return pacer.timed(b * n * layers, span, x, start=start, end=end).to("cpu", hidden.dtype)
    # written into preallocated buffers: per-unit outputs kept between freed activations
    # would fragment the heap
    out = torch.empty_like(x)
    if n * layers <= work:  # short rows: groups of whole rows, each through the plain path
        i = 0
        while i < b:
            if i:
                yield
                work = pacer.work(layers)
            rows = min(max(1, work // (n * layers)), b - i)
            out[i:i + rows] = pacer.timed(rows * n * layers, span, x[i:i + rows], start=start, end=end)
            i += rows
        return out.to("cpu", hidden.dtype)
    # long rows: row by row, layer by layer, in position chunks through a one-layer scratch
    # K/V cache: memory is two hidden-state rows and one layer's K/V (less than the plain path)
    buf = torch.empty_like(x[:1])
    first, work = True, pacer.work(1)
    for r in range(b):
        h, nxt = x[r:r + 1], (out[r:r + 1] if layers % 2 else buf)
        for layer in range(start, end):
            kv = new_kv(layer, layer + 1, 1, n)
            kv.reserve(n)
            cache = KVCache(kv)
            while kv.length < n:
                if not first:
                    yield
                    work = pacer.work(1)
                first = False
                i = kv.length
                # power-of-two chunks: a handful of shapes (oneDNN keeps a primitive, with its
                # scratch memory, per shape: arbitrary sizes grew the hoster by ~300 MB)
                chunk = h[:, i:i + (1 << (max(1, min(work, n - i)).bit_length() - 1))]
                nxt[:, i:i + chunk.shape[1]] = pacer.timed(chunk.shape[1], span, chunk, cache=cache,
                                                           start=layer, end=layer + 1)
                kv.length += chunk.shape[1]
            kv.clear()
            h, nxt = nxt, (buf if nxt is not buf else out[r:r + 1])
    return out.to("cpu", hidden.dtype)


def run_forward_unit(task, units: Generator, trim_after: int) -> bool:
    """Run one unit of a forward task (`hoster.backend._Task`); True once it is finished (result or error
    delivered to its future). A large forward's freed activations go back to the OS."""
    try:
        next(units)
    except StopIteration as done:
        task.future.set_result(done.value)
    except BaseException as e:  # delivered to the awaiting handler, never kills the thread
        task.future.set_exception(e)
    else:
        return False
    if task.hidden.numel() >= trim_after * task.hidden.shape[-1]:
        trim()
    return True
