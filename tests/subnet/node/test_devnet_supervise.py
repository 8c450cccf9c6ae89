"""`mesh-node devnet` keeps running when a child node exits, and with --restart starts it again
(same argv, backoff, bounded per minute): the supervisor on fake processes (fast), and a real
devnet whose hoster is killed -9 (slow)."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from subnet.node.devnet import Devnet, DevnetOptions, _Member


class FakeProc:
    pids = iter(range(1000, 2000))

    def __init__(self, argv):
        self.argv = argv
        self.proc = type("P", (), {"pid": next(self.pids), "returncode": None})()
        self.ready_line = None
        self.killed = False
        self.log_path = Path("/dev/null")

    @property
    def alive(self):
        return self.proc.returncode is None

    def exit(self, code=1):
        self.proc.returncode = code

    def kill(self):
        self.killed = True


def _devnet(tmp_path, **opts) -> tuple[Devnet, list[_Member]]:
    d = Devnet(DevnetOptions(workdir=str(tmp_path), **opts))
    spawned = []

    def spawn(m):
        m.proc = FakeProc(m.argv)
        d._procs.append(m.proc)
        m.ready = False
        spawned.append(m.name)

    d._spawn = spawn
    for i, name in enumerate(("validator-0", "hoster-1", "hoster-2")):
        m = _Member(name, name.split("-")[0], None, None, None, tmp_path, node_id=i + 1,
                    argv=["python", "-m", "subnet.node.cli", "--hoster", "--node-key", f"{name}.key"])
        if i:
            spawn(m)
            m.ready = True
        d.members.append(m)
    spawned.clear()
    d.spawned = spawned
    return d, d.members


def _events(caplog) -> list[str]:
    return [r.getMessage() + " " + " ".join(f"{k}={v}" for k, v in getattr(r, "fields", {}).items())
            for r in caplog.records if r.name == "mesh_node.devnet"]


def test_exit_is_logged_and_the_rest_keep_running(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mesh_node.devnet")
    d, (_, h1, h2) = _devnet(tmp_path)
    old = h1.proc
    old.exit(-9)
    d.supervise(now=0.0)  # no exception: the devnet keeps running
    d.supervise(now=100.0)
    assert old.killed, "the exited node's process group (DHT process, p2pd) is reaped"
    assert h1.down and h1.restart_at is None and d.spawned == []
    assert h2.proc.alive and old not in d._procs
    ev = _events(caplog)
    assert any(e.startswith("node_exited name=hoster-1") and "code=-9" in e for e in ev), ev
    assert any(e.startswith("node_not_restarted name=hoster-1") for e in ev), ev
    assert sum(e.startswith("node_exited") for e in ev) == 1


def test_restart_same_argv_with_backoff_and_a_limit(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mesh_node.devnet")
    d, (_, h1, h2) = _devnet(tmp_path, restart=True, max_restarts=2)
    argv = list(h1.argv)
    h1.proc.exit(1)
    d.supervise(now=0.0)
    assert h1.restart_at == 1.0
    d.supervise(now=0.5)
    assert d.spawned == []
    d.supervise(now=1.0)
    assert d.spawned == ["hoster-1"] and h1.proc.argv == argv and h1.proc.alive
    h1.proc.ready_line = "READY {}"
    d.supervise(now=1.5)
    assert h1.ready
    h1.proc.exit(1)  # second exit within the minute: a longer backoff
    d.supervise(now=2.0)
    assert h1.restart_at == 4.0
    d.supervise(now=4.0)
    assert d.spawned == ["hoster-1"] * 2
    h1.proc.exit(1)  # third: over the limit of 2 per minute, left stopped
    d.supervise(now=5.0)
    d.supervise(now=100.0)
    assert d.spawned == ["hoster-1"] * 2 and h1.down
    assert h2.proc.alive
    ev = _events(caplog)
    assert sum(e.startswith("node_restarted name=hoster-1") for e in ev) == 2
    assert any(e.startswith("node_ready name=hoster-1") for e in ev)
    assert any(e.startswith("node_restart_limit name=hoster-1") for e in ev), ev


def _wait(cond, timeout: float, what: str, proc=None):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if proc is not None:
            assert proc.alive, f"devnet exited while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


@pytest.mark.slow
def test_devnet_survives_a_hoster_kill_and_restarts_it(tmp_path):
    from subnet.node.procs import ManagedProcess

    log_path = tmp_path / "devnet.log"
    proc = ManagedProcess("devnet", [sys.executable, "-m", "subnet.node.cli", "devnet", "--hosters", "2",
                                     "--block-time", "0.3", "--api-port", "0", "--restart",
                                     "--dir", str(tmp_path / "d")], log_path=log_path)
    try:
        urls = json.loads(proc.wait_ready(timeout=300).split(" ", 1)[1])
        pid = int(re.search(r"node_started name=hoster-1 pid=(\d+)", log_path.read_text()).group(1))
        os.kill(pid, signal.SIGKILL)  # the hoster's main process only, as a crash would
        _wait(lambda: "node_exited name=hoster-1" in log_path.read_text(), 30, "node_exited", proc)
        m = _wait(lambda: re.search(r"node_restarted name=hoster-1 pid=(\d+)", log_path.read_text()), 60,
                  "node_restarted", proc)
        new_pid = int(m.group(1))
        assert new_pid != pid
        _wait(lambda: "node_ready name=hoster-1" in log_path.read_text(), 180, "the restarted hoster", proc)
        os.kill(new_pid, 0)  # alive
        assert proc.alive, "the devnet kept running"
        # the swarm serves again through the restarted hoster's announcement
        base = urls["dashboard"].rstrip("/")
        hoster_log = (tmp_path / "d" / "hoster-1.log").read_text()
        assert hoster_log.count("READY") >= 2  # same log file, appended by the second run
        _wait(lambda: len(httpx.get(base + "/subnet/coverage", timeout=30).json()["data"]) > 0, 60, "coverage")
        proc.proc.send_signal(signal.SIGINT)
        assert proc.proc.wait(90) == 0
    finally:
        proc.kill()
    log = log_path.read_text()
    assert "devnet_stopped" in log and "Traceback" not in log
    with pytest.raises(ProcessLookupError):
        os.kill(new_pid, 0)


def test_reputation_changes_are_logged_once_with_the_chains_reason(tmp_path, caplog):
    from types import SimpleNamespace

    caplog.set_level(logging.INFO, logger="mesh_node.devnet")
    d, _ = _devnet(tmp_path)
    results = {4: {"reputation_changes": [{"node_id": 2, "before": 1.0, "after": 0.75, "reason": "missing_from_scores",
                                           "detail": "left out of the accepted epoch's scores"}]}}
    epoch = [5]
    d.owner = SimpleNamespace(get_epoch_info=lambda sid=None: SimpleNamespace(epoch=epoch[0]),
                              get_epoch_result=lambda sid, e: results.get(e))
    d._reputation_epoch = 3
    d.log_reputation_changes(min_interval=0)
    d.log_reputation_changes(min_interval=0)
    epoch[0] = 6
    d.log_reputation_changes(min_interval=0)  # epoch 5 settled without a result: skipped once epoch 7 starts
    lines = [r for r in caplog.records if r.getMessage() == "reputation_changed"]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert lines[0].fields == {"epoch": 4, "node_id": 2, "name": "hoster-1", "before": "1.00", "after": "0.75",
                               "reason": "missing_from_scores", "detail": "left out of the accepted epoch's scores"}
