"""Issue 17: a node's DHT process and p2pd die with the node, and its key leaves no copies behind.

Real processes on 127.0.0.1: a `python -m hoster` node killed -9 (main pid only), the same node
stopped cleanly, and in-process DHTs whose DHT process is killed -9. Every wait is bounded and
polls a condition.
"""

from __future__ import annotations

import contextlib
import multiprocessing.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from keys.node_key import NodeKey

ROOT = Path(__file__).resolve().parents[3]
IDENTITY_GLOB = "mesh-node-id-*"


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `cond` until true; return the seconds it took (fail after `timeout`)."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - t0


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def p2pd_of(dht_pid: int) -> list[int]:
    return [c for c in children(dht_pid) if "p2pd" in cmdline(c)]


def dht_and_p2pd(main_pid: int) -> tuple[int, list[int]]:
    """The node's DHT process (the child that runs p2pd) and its daemon(s)."""
    for child in children(main_pid):
        daemons = p2pd_of(child)
        if daemons:
            return child, daemons
    raise AssertionError(f"no DHT child with a p2pd under {main_pid}: {[cmdline(c) for c in children(main_pid)]}")


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A fresh directory with a short path. Unix sockets made under TMPDIR (torch's shm manager,
    p2pd's control socket) must fit in 108 bytes; pytest's tmp_path under xdist (.../popen-gw1/...)
    can be too long, and torch_shm_manager then fails with 'Invalid argument'."""
    d = Path(tempfile.mkdtemp(prefix="mn-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def private_tmp(short_tmp, monkeypatch, tmp_path_factory) -> Path:
    """A TMPDIR of this test's own, so leftover identity dirs are this test's.

    Process-wide temp dirs that are made on first use are made first, outside it: pytest's
    base temp dir and multiprocessing's. Run alone, this module's first test would otherwise
    create them inside `d`, which is deleted after the test, and every later test of the
    process failed with FileNotFoundError (or hung on a vanished multiprocessing socket)."""
    tmp_path_factory.getbasetemp()
    multiprocessing.util.get_temp_dir()
    d = short_tmp
    monkeypatch.setenv("TMPDIR", str(d))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    return d


# ---------------------------------------------------------------- in-process DHTs


def test_generated_identity_lives_only_while_the_daemon_starts(private_tmp):
    """A generated key is gone from disk once the DHT is up, yet the daemon keeps its identity and serves."""
    from subnet.swarm.dht import start_dht, visible_maddrs

    key = NodeKey.generate()
    first = start_dht(key)
    second = None
    try:
        assert first.peer_id.to_base58() == key.peer_id
        assert not list(private_tmp.glob(IDENTITY_GLOB)), "the identity copy outlived the daemon's start-up"
        second = start_dht(None, visible_maddrs(first))  # the daemon still works without its identity file
        assert second.store("k", "v", time.time() + 60)
        got = first.get("k", latest=True)
        assert got is not None and got.value == "v"
        assert first.peer_id.to_base58() == key.peer_id
    finally:
        for d in (second, first):
            if d is not None:
                d.shutdown()
    assert not list(private_tmp.glob(IDENTITY_GLOB))


def test_a_key_file_is_handed_to_the_daemon_directly(private_tmp, tmp_path):
    """`--node-key` files are libp2p-marshalled keys: p2pd reads the file itself, no copy is made."""
    from subnet.swarm.dht import start_dht

    path = NodeKey.generate().save(tmp_path / "node.key")
    key = NodeKey.load(path)
    dht = start_dht(key)
    try:
        assert dht.peer_id.to_base58() == key.peer_id
        assert not list(private_tmp.glob(IDENTITY_GLOB))
        (daemon,) = p2pd_of(dht.pid)
        assert f"-id={path.absolute()}" in cmdline(daemon).split()
    finally:
        dht.shutdown()
    assert path.read_bytes() == key.to_libp2p_bytes()  # hivemind left the key file as it was


def test_p2pd_dies_with_its_dht_process():
    """kill -9 of the DHT process itself takes its p2pd along (parent-death signal on the daemon)."""
    from hivemind.utils.mpfuture import MPFuture

    from subnet.swarm.dht import start_dht

    dht = start_dht()
    daemons = p2pd_of(dht.pid)
    assert daemons
    # hivemind's MPFuture._update_lock is one semaphore shared by every process this one forks. A DHT
    # process killed while it holds it (it had just sent "ready") leaves it held for good, and the next
    # DHT started in this pytest worker hung at its first result (stress-test, random order). Holding
    # the lock here across the kill makes sure the victim does not.
    with MPFuture._update_lock:
        os.kill(dht.pid, signal.SIGKILL)
        dht.join(5)
    took = wait_for(lambda: not any(alive(p) for p in daemons), 10, "p2pd to exit after its DHT process")
    print(f"p2pd exited {took:.2f} s after its DHT process was killed")
    dht.join(5)


STUCK_LOCK = """
import os, signal, sys, time
from hivemind.utils.mpfuture import MPFuture
from subnet.swarm.dht import DHTStartError, start_dht

pid = os.fork()
if pid == 0:  # a forked process killed while it holds the lock every forked process shares
    MPFuture._update_lock.acquire()
    time.sleep(60)
    os._exit(0)
time.sleep(0.5)
os.kill(pid, signal.SIGKILL)
os.waitpid(pid, 0)
t0 = time.monotonic()
try:
    start_dht(ready_timeout=3)
except DHTStartError as e:
    print("refused", round(time.monotonic() - t0), e, flush=True)
os._exit(0)
"""


def test_a_dht_that_never_gets_ready_is_an_error_not_a_hang():
    """hivemind waits for its DHT process without a deadline; start_dht gives up (DHTStartError) and
    stops the process. In its own interpreter: the stuck lock would hang every later DHT here."""
    r = subprocess.run([sys.executable, "-c", STUCK_LOCK], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                       capture_output=True, text=True, timeout=120)
    assert r.stdout.startswith("refused "), (r.stdout, r.stderr[-2000:])
    assert "not ready within 3 s" in r.stdout


FAKE_P2PD_PARENT = """
import asyncio, sys
from hivemind.utils import switch_to_uvloop
from subnet.swarm import lifetime

lifetime.p2pd_dies_with_its_parent(spawned := [])
loop = switch_to_uvloop()  # the event loop the DHT process uses

async def main():
    proc = await asyncio.subprocess.create_subprocess_exec(sys.argv[1])
    print(proc.pid, spawned == [proc.pid], flush=True)
    await asyncio.sleep(120)

loop.run_until_complete(main())
"""


def test_spawned_p2pd_gets_a_parent_death_signal(tmp_path):
    """The daemon dies with the process that spawned it even if it would not notice by itself
    (here a stand-in `p2pd` that only sleeps)."""
    fake = tmp_path / "p2pd"
    fake.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(120)\n")
    fake.chmod(0o755)
    parent = subprocess.Popen([sys.executable, "-c", FAKE_P2PD_PARENT, str(fake)], cwd=ROOT, text=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE)  # fmt: skip
    try:
        pid, recorded = parent.stdout.readline().split()
        daemon = int(pid)
        assert recorded == "True" and alive(daemon)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        wait_for(lambda: not alive(daemon), 10, "the stand-in p2pd to get its parent-death signal")
    finally:
        parent.kill()
        if "daemon" in locals() and alive(daemon):
            os.kill(daemon, signal.SIGKILL)


def test_clean_shutdown_stops_dht_and_p2pd():
    from subnet.swarm.dht import start_dht

    dht = start_dht()
    pid, daemons = dht.pid, p2pd_of(dht.pid)
    dht.shutdown()
    wait_for(lambda: not alive(pid) and not any(alive(p) for p in daemons), 10, "DHT and p2pd to stop")


# ---------------------------------------------------------------- a real node process


class NodeProcess:
    """`python -m hoster` with a generated key and a private TMPDIR."""

    def __init__(self, model: str, tmpdir: Path, timeout: float = 120.0, new_session: bool = False):
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", TMPDIR=str(tmpdir))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hoster", "--no-progress", "--model", model, "--blocks", "0:2",
             "--cache-tokens", "64"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=new_session,
        )  # fmt: skip
        self.stderr: list[str] = []
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not line or not line[0].startswith("READY "):
            self.kill()
            raise RuntimeError(f"node did not start: {line!r}\n{''.join(self.stderr[-30:])}")
        self.dht_pid, self.p2pd = dht_and_p2pd(self.proc.pid)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)

    def reap_leftovers(self) -> None:
        """Never leave processes behind, even when the test failed."""
        for pid in [self.dht_pid, *self.p2pd]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_children_die_with_a_node_killed_9(tiny_llama, short_tmp):
    tmpdir = short_tmp
    node = NodeProcess(tiny_llama, tmpdir)
    try:
        os.kill(node.proc.pid, signal.SIGKILL)  # the main pid only, not the process group
        node.proc.wait(10)
        took = wait_for(lambda: not alive(node.dht_pid) and not any(alive(p) for p in node.p2pd), 10,
                        "the DHT process and p2pd of a node killed -9 to exit")  # fmt: skip
        print(f"DHT process and p2pd exited {took:.2f} s after the node was killed -9")
        assert not list(tmpdir.glob(IDENTITY_GLOB)), "the key copy outlived the node"
    finally:
        node.reap_leftovers()


@pytest.mark.slow
def test_clean_stop_leaves_no_identity_and_no_children(tiny_llama, short_tmp):
    tmpdir = short_tmp
    node = NodeProcess(tiny_llama, tmpdir)
    try:
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(30) == 0, "".join(node.stderr[-30:])
        wait_for(lambda: not alive(node.dht_pid) and not any(alive(p) for p in node.p2pd), 10,
                 "the DHT process and p2pd of a node stopped cleanly")  # fmt: skip
        assert not list(tmpdir.glob(IDENTITY_GLOB)), "the key copy outlived the node"
        assert "announcement_withdrawn" in "".join(node.stderr)  # the clean path still withdraws
    finally:
        node.reap_leftovers()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_whole_process_group_stops_the_node(tiny_llama, short_tmp, sig):
    """What `timeout`, a service manager's group stop and a terminal's Ctrl-C do: the signal reaches
    the node, its DHT process and p2pd at once. The DHT process is forked after the node installed
    its stop handler; had it kept that handler, SIGTERM would only set an event in the DHT's copy of
    the node, the DHT's `terminate()` would be swallowed too, and the node hung at exit joining it."""
    node = NodeProcess(tiny_llama, short_tmp, new_session=True)
    try:
        t0 = time.monotonic()
        os.killpg(node.proc.pid, sig)
        try:
            code = node.proc.wait(60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the node did not exit after a group {sig.name}: "
                                 + "".join(node.stderr[-20:])) from None
        assert code == 0, "".join(node.stderr[-30:])
        print(f"group {sig.name}: the node exited after {time.monotonic() - t0:.1f} s")
        log = "".join(node.stderr)
        # Ctrl-C spares the DHT process and p2pd (hivemind ignores SIGINT there): the node withdraws its
        # announcement. SIGTERM took them already: the node says so instead of waiting out a store.
        assert ("announcement_withdrawn" if sig == signal.SIGINT else "withdraw_skipped") in log, log[-3000:]
        wait_for(lambda: not alive(node.dht_pid) and not any(alive(p) for p in node.p2pd), 10,
                 f"the DHT process and p2pd to exit after a group {sig.name}")  # fmt: skip
        assert not list(short_tmp.glob(IDENTITY_GLOB)), "the key copy outlived the node"
    finally:
        node.reap_leftovers()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.proc.pid, signal.SIGKILL)
