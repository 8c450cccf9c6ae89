"""Child processes of a local subnet: start, wait for a READY line, stop cleanly.

`mesh-node devnet` and multi-process tests run every node as a real OS process; this
module owns the lifecycle so no process outlives its parent by accident.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from subnet.node import forkserver


class ProcessFailed(RuntimeError):
    """A child exited or timed out before it reported ready."""


class ManagedProcess:
    """A child process whose stdout is scanned for a `READY ...` line and logged to a file.

    `python -m MODULE` children start from a fork-server template when MESH_NODE_FORKSERVER=1 (or
    `fork=True`): the same process, minus ~2.5 s of CPU importing torch & co.; `fork=False` forces a
    fresh interpreter."""

    def __init__(self, name: str, argv: Sequence[str], *, log_path: str | os.PathLike | None = None,
                 env: dict[str, str] | None = None, ready_prefix: str = "READY", fork: bool | None = None):
        self.name = name
        self.argv = list(argv)
        self.ready_prefix = ready_prefix
        self.ready_line: str | None = None
        self._ready = threading.Event()
        self.log_path = Path(log_path) if log_path else None
        self._log = open(self.log_path, "a", buffering=1) if self.log_path else None
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        module = forkserver.module_of(self.argv)
        proc: subprocess.Popen | forkserver.ForkedProcess | None = None
        if module is not None and (forkserver.enabled() if fork is None else fork):
            template = forkserver.template_for(full_env)
            try:  # forked from a template that imported torch & co. once (subnet.node.forkserver); a new session
                proc = template.spawn(*module, env=full_env) if template is not None else None
            except OSError:  # the template died under us: start this one fresh (the next request restarts it)
                proc = None
        if proc is None:
            proc = subprocess.Popen(
                self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env,
                start_new_session=True,  # Ctrl-C in the parent's terminal is handled by the parent
            )
        self.proc: subprocess.Popen | forkserver.ForkedProcess = proc
        self._reader = threading.Thread(target=self._pump, name=f"{name}-stdout", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if self._log:
                self._log.write(line)
            if self.ready_line is None and line.startswith(self.ready_prefix):
                self.ready_line = line.strip()
                self._ready.set()
        self._ready.set()  # EOF: unblock waiters

    def wait_ready(self, timeout: float = 120.0) -> str:
        if not self._ready.wait(timeout):
            self.kill()
            raise ProcessFailed(f"{self.name} did not become ready within {timeout:.0f}s (log: {self.log_path})")
        if self.ready_line is None:
            raise ProcessFailed(f"{self.name} exited with code {self.proc.poll()} before ready (log: {self.log_path})")
        return self.ready_line

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (the node withdraws announcements and ends sessions), then SIGKILL."""
        if self.alive:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the whole process group: hivemind's DHT process and p2p daemon do not die
        with their parent, so killing only the main process would leave them running."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.alive:
            self.proc.kill()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._close()

    def _close(self) -> None:
        self._reader.join(timeout=2)
        if self._log and not self._log.closed:
            self._log.close()


def python_module_argv(module: str, *args: str) -> list[str]:
    """argv to run `python -m module args...` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def stop_all(procs: Sequence[ManagedProcess], timeout: float = 15.0) -> None:
    """Stop children in reverse start order, in parallel after a shared deadline."""
    for p in reversed(procs):
        if p.alive:
            try:
                p.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    for p in reversed(procs):
        try:
            p.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        p.kill()  # reaps leftovers of the group (DHT process, p2p daemon) even after a clean exit

