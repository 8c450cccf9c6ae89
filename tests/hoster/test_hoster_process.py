"""`python -m hoster` as a real process: READY line, memory vs. blocks served, clean SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import hoster_rpc as rh
import pytest
import torch

from hoster.server import own_p2p_replica
from subnet.swarm import wire
from subnet.swarm.announcements import read_announcements

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


class HosterProcess:
    def __init__(self, *args: str, timeout: float = 120.0):
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "hoster", "--no-progress", *args], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stderr: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not line or not line[0].startswith("READY "):
            self.stop()
            raise RuntimeError(f"hoster did not start: {line!r}\n{''.join(self.stderr[-30:])}")
        _, self.peer_id, self.maddr = line[0].split()

    def _drain(self):
        for ln in self.proc.stderr:
            self.stderr.append(ln)

    def rss_bytes(self) -> int:
        for ln in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self, sig=signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def processes():
    started: list[HosterProcess] = []

    def launch(*args: str) -> HosterProcess:
        p = HosterProcess(*args)
        started.append(p)
        return p

    yield launch
    for p in started:
        p.stop()


def test_memory_grows_with_blocks_served(tiny_model_factory, processes):
    path = tiny_model_factory("llama", hidden_size=512, intermediate_size=2048, num_heads=8, num_kv_heads=2)
    layer_bytes = sum(f.stat().st_size for f in Path(path).glob("*.safetensors")) / 8  # ~upper bound per layer
    rss = {}
    for blocks in ("0:2", "0:8"):
        p = processes("--model", path, "--blocks", blocks, "--cache-tokens", "256")
        time.sleep(1.0)
        rss[blocks] = p.rss_bytes()
        p.stop()
    delta = rss["0:8"] - rss["0:2"]
    print(f"\nRSS serving 2/8 blocks: {rss['0:2'] / 2**20:.0f} MiB, 8/8 blocks: {rss['0:8'] / 2**20:.0f} MiB, "
          f"delta {delta / 2**20:.0f} MiB (6 layers ~ {6 * layer_bytes / 2**20:.0f} MiB of weights)")
    assert delta > 0.5 * 6 * layer_bytes  # the 6 extra layers really are resident; 2 blocks load only 2


async def test_sigterm_withdraws_and_fails_open_sessions(tiny_llama, processes, client_dht_factory):
    p = processes("--model", tiny_llama, "--blocks", "0:8", "--model-name", "proc-test", "--cache-tokens", "100")
    dht = client_dht_factory([p.maddr])
    assert [a.peer_id for a in read_announcements(dht, "proc-test")] == [p.peer_id]
    p2p = await own_p2p_replica(dht)
    try:
        s = rh.Stream(p2p, p.peer_id)
        await s.open("proc-test", 0, 8, max_length=8)
        x = torch.randn(1, 3, 64)
        assert (await s.step(x, 0)).shape == (1, 3, 64)
        p.proc.send_signal(signal.SIGTERM)
        err = wire.response_error(await s.receive(timeout=20))
        assert err[0] == "busy" and "shutting down" in err[1]
        await s.close()
    finally:
        await p2p.shutdown()
    assert await asyncio.get_running_loop().run_in_executor(None, p.proc.wait, 30) == 0
    assert read_announcements(dht, "proc-test") == []
    assert any("announcement_withdrawn" in ln for ln in p.stderr)
