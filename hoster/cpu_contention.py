"""How busy the rest of the machine was while the hoster timed its decode paths.

The compiled and eager steps are timed interleaved, so a steady load slows both alike; a burst
of other work (another hoster compiling on the same cores, a benchmark starting) does not, and
it turned a 24.5 vs 35 ms win into a tie once. A choice timed while other processes kept the
cores busy is served for now but neither trusted nor kept as final (hoster.compile_auto).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MAX_OTHER_LOAD = 0.5  # cores other processes may keep busy, on average, for a timing to count as quiet


@dataclass(frozen=True)
class CpuSample:
    """A point in time: wall clock, the whole machine's busy CPU seconds, this process's CPU seconds."""

    wall: float
    machine_busy: float
    own: float


def parse_proc_stat(text: str, ticks_per_second: float) -> float:
    """Busy CPU seconds of all cores since boot from /proc/stat's `cpu` line (idle and iowait excluded)."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
            return (sum(values) - values[3] - values[4]) / ticks_per_second
    raise ValueError("no aggregate cpu line in /proc/stat")


def sample(stat: Path = Path("/proc/stat")) -> CpuSample | None:
    """Now, or None where the machine's CPU counters cannot be read (not Linux): then nothing is contended."""
    try:
        busy = parse_proc_stat(stat.read_text(), os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError):
        return None
    t = os.times()
    return CpuSample(time.monotonic(), busy, t.user + t.system)


def others_load(before: CpuSample | None, after: CpuSample | None) -> float:
    """Mean number of cores that other processes kept busy between two samples (0.0 if unknown)."""
    if before is None or after is None or after.wall <= before.wall:
        return 0.0
    other = (after.machine_busy - before.machine_busy) - (after.own - before.own)
    return max(0.0, other / (after.wall - before.wall))


BACKGROUND_NICE = 10  # niceness added to a hoster's background compile thread
SWITCH_INTERVAL = 0.0005  # seconds a thread may hold the GIL while another waits (Python's default: 0.005)


def in_background(fn: Callable[[], None]) -> Callable[[], None]:
    """`fn`, run so that it does not starve the compute thread and the event loop of its process.

    CPU: the thread runs at lower priority (Linux niceness is per thread; the threads and compiler
    processes it starts inherit it). GIL: dynamo and inductor are mostly Python, and with Python's
    5 ms switch interval every hand-off of the GIL to a serving thread (each request, each step)
    waited up to 5 ms; the process's interval is lowered to 0.5 ms. Measured with 8 sessions through
    3 hosters compiling on demand (four runs): 20-26 tok/s per pass at 5 ms, 35-57 at 0.5 ms; with no
    compile running, the same 30-32 tok/s for one session either way."""

    def run() -> None:
        with contextlib.suppress(OSError, AttributeError):  # not Linux, or not allowed: normal priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
        fn()

    sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
    return run
