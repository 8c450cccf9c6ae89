"""Timestamps of one decode step's parts, in the hosters and the client (for `benchmarks.profile_chain`).

Installed by wrapping methods on the classes at run time (nothing in hoster/ or subnet/ is
edited): `install_hoster()` in a hoster process (`python -m benchmarks.traced_hoster`),
`install_client()` in the client's. Every wrapped call appends `(name, t0, t1)` with
`time.perf_counter()` (CLOCK_MONOTONIC: one clock for every process on the machine), so the
reader can keep only the calls inside a measured window. Recorded:

  hoster  step      `Backend.step`: event loop -> compute thread -> back (the whole step)
          span      the span forward on the compute thread (`Backend._run`, else `BlockSpan.forward`)
          span_ops  in profiling mode only: the time torch ops ran inside `span` (union of the
                    top-level op intervals of a `torch.profiler` trace of that call, compute thread),
          span_inner  and the wall of the same call inside the profiler (ops / inner: the op share)
          receipt   signing the step's receipt; push  sending the output to the next hoster
          open / fork_open   opening a session (checks, KV reservation) / the prefix cache's fork
  both    encode / decode   `subnet.swarm.wire` tensor (de)serialisation
  client  wait      `InferenceStream.receive_step` (waiting for a hoster's answer)
          head / embed      the client's LM head (+ final norm) and embedding calls
          open      `InferenceSession.open` (route, one stream per hoster)
          verify / history  checking a hop's receipt / keeping its input for replays
          head_ops / embed_ops (+ _inner)   their op time and wall, in profiling mode

Profiling mode is on while the file `<trace dir>/profile` exists; a hoster writes its
records to `<trace dir>/<pid>.json` when `<trace dir>/dump-<n>` appears (a poll thread,
every 0.2 s), and clears them after.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import threading
import time
from pathlib import Path

TRACE_ENV = "MESH_TRACE_DIR"
RECORDS: list[tuple[str, float, float]] = []
_PROFILES: list[tuple[str, float, object, int]] = []  # (name, t0, profiler, thread id): reduced at dump


def _trace_dir() -> Path | None:
    d = os.environ.get(TRACE_ENV)
    return Path(d) if d else None


def profiling() -> bool:
    d = _trace_dir()
    return d is not None and (d / "profile").exists()


def op_seconds(prof, thread: int | None = None) -> float:
    """Time covered by top-level op intervals of a `torch.profiler` trace (of `thread`, if it has any)."""
    events = [e for e in prof.events() if e.cpu_parent is None]
    mine = [e for e in events if thread is not None and e.thread == thread]
    spans = sorted((e.time_range.start, e.time_range.end) for e in (mine or events))
    total, cur_s, cur_e = 0.0, None, None
    for s, e in spans:
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total / 1e6  # microseconds


def _run_profiled(name: str, fn, *args, **kwargs):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        t1 = time.perf_counter()
    RECORDS.append((name + "_inner", t0, t1))  # the call's wall inside the profiler: ops / inner = op share
    _PROFILES.append((name + "_ops", t0, prof, threading.get_native_id()))
    return out


def timed(name: str, fn, *, ops: bool = False):
    """`fn` wrapped to record its wall time (and, with `ops`, its op time in profiling mode)."""
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                RECORDS.append((name, t0, time.perf_counter()))
        return wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            if ops and profiling():
                return _run_profiled(name, fn, *args, **kwargs)
            return fn(*args, **kwargs)
        finally:
            RECORDS.append((name, t0, time.perf_counter()))
    return wrapper


def _wrap(owner, attr: str, name: str, *, ops: bool = False) -> bool:
    fn = getattr(owner, attr, None)
    if fn is None:
        return False
    setattr(owner, attr, timed(name, fn, ops=ops))
    return True


def _wrap_wire() -> None:
    from subnet.swarm import wire

    _wrap(wire, "encode_tensor", "encode")
    _wrap(wire, "decode_tensor", "decode")


def install_hoster() -> None:
    """Wrap the hoster's step path (call before the hoster starts) and start the dump thread."""
    from hoster import servicer
    from hoster.backend import Backend

    _wrap(Backend, "step", "step")
    if not _wrap(Backend, "_run", "span", ops=True):  # the lean step may have renamed it: time the blocks
        from subnet.model.blocks import BlockSpan

        _wrap(BlockSpan, "forward", "span", ops=True)
    _wrap(servicer.BlockServicer, "_receipt", "receipt")
    _wrap(servicer.BlockServicer, "_push_onward", "push")
    _wrap(servicer.BlockServicer, "_open", "open")
    _wrap(servicer, "fork_open", "fork_open")
    _wrap_wire()
    if _trace_dir() is not None:
        threading.Thread(target=_dump_loop, name="chain-trace-dump", daemon=True).start()


def install_client() -> None:
    """Wrap the client's waits, head and embeddings (in the process that runs `generate`)."""
    from subnet.client import session
    from subnet.client.generation import ClientHead
    from subnet.client.transport import InferenceStream

    _wrap(InferenceStream, "receive_step", "wait")
    _wrap(session.InferenceSession, "open", "open")
    _wrap(session, "mirror_and_verify", "verify")
    _wrap(session, "record_history", "history")
    _wrap(ClientHead, "_head", "head", ops=True)
    _wrap(ClientHead, "embed_ids", "embed", ops=True)
    _wrap_wire()


def take_records() -> list[tuple[str, float, float]]:
    """Every record so far (profiled calls reduced to `<name>_ops` records), then clears them."""
    out = list(RECORDS)
    for name, t0, prof, tid in _PROFILES:
        out.append((name, t0, t0 + op_seconds(prof, tid)))
    RECORDS.clear()
    _PROFILES.clear()
    return out


def _dump_loop() -> None:
    d = _trace_dir()
    done: set[str] = set()
    while True:
        time.sleep(0.2)
        for f in d.glob("dump-*"):
            if f.name in done:
                continue
            done.add(f.name)
            out = d / f"{os.getpid()}-{f.name}.json"
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(take_records()))
            tmp.rename(out)
