"""Tie a node's DHT process and its p2pd daemon to the node's lifetime (Linux).

hivemind runs the DHT in a forked child process that spawns the `p2pd` daemon. Nothing ties
either to its parent: kill -9 the node's main process and both stay online under the node's
identity forever. Two guards fix that:

* `watch_parent` (run inside the DHT process): a thread waits for the parent to exit (a
  pidfd, or polling `getppid()` where pidfds are missing), then stops the daemons this process
  spawned, removes leftover identity files and exits.
* `p2pd_dies_with_its_parent` (run inside the DHT process): every p2pd it spawns gets
  `PR_SET_PDEATHSIG`, so the daemon also dies when the DHT process itself is killed -9.

The parent-death signal fires when the *thread* that spawned the child exits, so it is only set
on p2pd (spawned by the DHT process's one event-loop thread, which lives as long as the process),
never on the DHT process (started from whichever thread called `start_dht`).
"""

from __future__ import annotations

import asyncio.subprocess
import ctypes
import logging
import os
import select
import shutil
import signal
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_POLL_S = 0.5

try:  # resolved before any fork: a forked child must not dlopen (another thread may hold its lock)
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def parent_death_signal_supported() -> bool:
    return _prctl is not None


def _die_with_parent(sig: int, parent_pid: int) -> None:
    """preexec_fn (in the forked child, before exec): get `sig` when the parent goes away."""
    _prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os.kill(os.getpid(), sig)


def p2pd_dies_with_its_parent(spawned: list[int], sig: int = signal.SIGTERM) -> None:
    """In the DHT process: arm the parent-death signal on every p2pd hivemind spawns from now on and
    record the daemons' pids in `spawned`. hivemind spawns p2pd through
    `asyncio.subprocess.create_subprocess_exec` (passing no preexec_fn), and this process is ours."""
    original = asyncio.subprocess.create_subprocess_exec
    if getattr(original, "_mesh_pdeathsig", False):
        return

    async def create_subprocess_exec(program, *args, **kwargs):
        is_p2pd = os.path.basename(str(program)) == "p2pd"
        if is_p2pd and _prctl is not None and kwargs.get("preexec_fn") is None:
            me = os.getpid()
            kwargs["preexec_fn"] = lambda: _die_with_parent(sig, me)
        proc = await original(program, *args, **kwargs)
        if is_p2pd:
            spawned.append(proc.pid)
        return proc

    create_subprocess_exec._mesh_pdeathsig = True
    asyncio.subprocess.create_subprocess_exec = create_subprocess_exec


def _wait_for_exit(pid: int) -> None:
    """Block until process `pid` (our parent) has exited."""
    fd = None
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pass
    try:
        if os.getppid() != pid:  # already gone (also guards against a reused pid behind the pidfd)
            return
        if fd is not None:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            while not poller.poll():
                pass
            return
        while os.getppid() == pid:
            time.sleep(_POLL_S)
    finally:
        if fd is not None:
            os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def stop_processes(pids: list[int], grace: float = 3.0) -> None:
    """SIGTERM `pids`, SIGKILL whatever is still alive after `grace` seconds."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def remove_dir(path: str | os.PathLike | None) -> None:
    if path:
        shutil.rmtree(path, ignore_errors=True)


def watch_parent(parent_pid: int, on_exit: Callable[[], None]) -> threading.Thread:
    """Start a daemon thread that calls `on_exit()` and then `os._exit(1)` once `parent_pid` exits."""

    def run() -> None:
        _wait_for_exit(parent_pid)
        try:
            on_exit()
        finally:
            os._exit(1)

    t = threading.Thread(target=run, name="mesh-parent-watch", daemon=True)
    t.start()
    return t
