"""The message-cost benchmark (benchmarks/transport.py): payload sizes, the daemons' CPU, real round trips."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

from benchmarks.transport import children_cpu_seconds, measure, payloads, per_message_work


def test_payloads_are_one_decode_row_and_a_512_position_prefill_in_float32() -> None:
    assert payloads(["a"]) == {"a: decode row": 512 * 4, "a: prefill 512": 512 * 512 * 4}


def test_a_busy_child_is_counted_and_an_idle_one_is_not() -> None:
    """A child that used 0.6 s of CPU is counted; while it sleeps, its count stays put. The child spins
    for CPU time, not wall time, and says when it is done: on a loaded machine a second of wall clock
    can be a fraction of a second of CPU (stress-test load run, tenth session: the child had 0.5 s)."""
    spin = ("import sys, time\nwhile time.process_time() < 0.6:\n    pass\nprint('spun', flush=True)\n"
            "time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "spun"  # bounded: the child spins 0.6 s of CPU, then says so
        busy = children_cpu_seconds()
        assert busy >= 0.5  # /proc counts in clock ticks: a little under what the child measured
        time.sleep(0.5)
        assert children_cpu_seconds() - busy < 0.1  # asleep: no more CPU counted
    finally:
        child.kill()
        child.wait()


def test_round_trips_over_both_transports_echo_and_are_timed() -> None:
    out = asyncio.run(measure({"row": 2048, "big": 300_000}, messages=20, passes=1))
    for name in ("row", "big"):
        for transport in ("hivemind p2p", "asyncio tcp"):
            r = out[name][transport]
            assert r["wall"] > 0 and r["cpu"] > 0 and r["daemons"] >= 0, (name, transport, r)
    work = per_message_work(2048, 20)
    assert set(work) == {"wire encode+decode", "output hash", "Ed25519 sign", "Ed25519 verify"}
    assert all(v > 0 for v in work.values())
