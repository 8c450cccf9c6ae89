"""Real hoster processes on 127.0.0.1 for client tests (module-scoped: start once, share)."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from subnet.node.procs import ManagedProcess, python_module_argv


@dataclass
class HosterProc:
    proc: ManagedProcess
    peer_id: str
    blocks: tuple[int, int]

    def kill(self) -> None:
        """SIGKILL the whole process group (hoster, its DHT process, its p2p daemon): a machine dying."""
        try:
            os.killpg(self.proc.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.proc.wait(10)
        self.proc.kill()


@dataclass
class Swarm:
    """A bootstrap DHT in the test process plus hoster subprocesses joining it."""

    initial_peers: list[str]
    bootstrap: object
    hosters: list[HosterProc] = field(default_factory=list)
    logdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="mesh-client-test-"))

    pending: list = field(default_factory=list)

    def start_hosters_async(self, model: str, spans: list[tuple[int, int]], *extra: str) -> None:
        """Launch hosters for `spans` (they load in parallel); `wait_all` collects them."""
        for a, b in spans:
            n = len(self.hosters) + len(self.pending)
            argv = python_module_argv(
                "hoster", "--model", model, "--blocks", f"{a}:{b}", "--initial-peers", *self.initial_peers,
                "--no-progress", "--log-level", "WARNING", "--announce-period", "2", *extra,
            )
            proc = ManagedProcess(f"hoster{n}", argv, log_path=os.path.join(self.logdir, f"hoster{n}.log"),
                                  env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
            self.pending.append((proc, (a, b)))

    def wait_all(self, timeout: float = 180.0) -> list[HosterProc]:
        out = []
        try:
            for proc, blocks in self.pending:
                try:
                    line = proc.wait_ready(timeout)
                except Exception as e:  # keep the hoster's last words: the log dir is removed at teardown
                    tail = open(proc.log_path).read()[-3000:] if proc.log_path and proc.log_path.exists() else ""
                    raise RuntimeError(f"{e}\n--- {proc.name} log tail ---\n{tail}") from e
                out.append(HosterProc(proc, line.split()[1], blocks))
        finally:
            # started processes are owned by the swarm from now on, ready or not
            self.hosters.extend(out)
            for proc, blocks in self.pending[len(out):]:
                HosterProc(proc, "", blocks).kill()  # the whole group: hoster, DHT process, p2p daemon
            self.pending.clear()
        return out

    def start_hosters(self, model: str, spans: list[tuple[int, int]], *extra: str) -> list[HosterProc]:
        self.start_hosters_async(model, spans, *extra)
        return self.wait_all()

    def shutdown(self) -> None:
        # SIGTERM to each hoster only, as an operator's Ctrl-C: the hoster withdraws through its own DHT
        # process and stops it. Signalling the whole group killed that DHT process under the hoster's
        # feet, and every withdrawal then waited for its timeout.
        for h in self.hosters:
            if h.proc.alive:
                try:
                    h.proc.proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 8
        for h in self.hosters:
            try:
                h.proc.proc.wait(max(0.1, deadline - time.monotonic()))
            except Exception:
                try:
                    os.killpg(h.proc.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            h.kill()
        self.hosters.clear()
        try:
            self.bootstrap.shutdown()
        except Exception:
            pass
        shutil.rmtree(self.logdir, ignore_errors=True)


@pytest.fixture(scope="module")
def swarm_factory() -> Iterator:
    """`swarm_factory()` -> a new Swarm (bootstrap peer in this process); all torn down after the module."""
    from subnet.swarm.dht import start_dht, visible_maddrs

    swarms: list[Swarm] = []

    def make() -> Swarm:
        dht = start_dht()
        s = Swarm(visible_maddrs(dht), dht)
        swarms.append(s)
        return s

    yield make
    for s in swarms:
        s.shutdown()
