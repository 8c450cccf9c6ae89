"""`mesh-node devnet`: block ranges, and the whole subnet end to end from the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from subnet.node.devnet import overlapping_ranges
from subnet.node.procs import ManagedProcess


@pytest.mark.parametrize("blocks,count", [(8, 1), (8, 2), (8, 3), (24, 3), (5, 4), (12, 6), (3, 5)])
def test_overlapping_ranges_cover_every_block(blocks, count):
    ranges = overlapping_ranges(blocks, count)
    assert len(ranges) == count
    served = [sum(a <= i < b for a, b in ranges) for i in range(blocks)]
    assert min(served) >= 1
    assert all(0 <= a < b <= blocks for a, b in ranges)
    if count > 1 and blocks >= count + 1:
        assert max(served) >= 2, "neighbouring hosters overlap"


@pytest.mark.slow
def test_devnet_epochs_end_to_end(tmp_path):
    """The README's main job, shortened: 3 hosters + 1 validator, 2 scored epochs, summary, exit 0."""
    r = subprocess.run(
        [sys.executable, "-m", "subnet.node.cli", "devnet", "--epochs", "2", "--block-time", "0.3",
         "--epoch-length", "20", "--api-port", "0", "--dir", str(tmp_path / "devnet")],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "consensus OK: 2 epoch(s)" in r.stdout
    assert r.stdout.count("accepted") == 2
    for name in ("hoster-1", "hoster-2", "hoster-3", "validator-0"):
        assert name in r.stdout
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_devnet_serves_api_and_stops_cleanly(tmp_path):
    """Without --epochs the devnet runs until SIGINT; the API answers chat completions meanwhile."""
    proc = ManagedProcess("devnet", [sys.executable, "-m", "subnet.node.cli", "devnet", "--hosters", "2",
                                     "--block-time", "0.3", "--api-port", "0", "--dir", str(tmp_path / "d")],
                          log_path=tmp_path / "devnet.log")
    try:
        urls = json.loads(proc.wait_ready(timeout=300).split(" ", 1)[1])
        models = httpx.get(urls["api"] + "/models", timeout=30).json()["data"]
        assert models, "the swarm serves the devnet model"
        r = httpx.post(urls["api"] + "/chat/completions", timeout=120, json={
            "model": models[0]["id"], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
        })
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")
        import signal

        proc.proc.send_signal(signal.SIGINT)
        assert proc.proc.wait(60) == 0
    finally:
        proc.kill()
    log = (tmp_path / "devnet.log").read_text()
    assert "devnet_stopped" in log and "Traceback" not in log


@pytest.mark.parametrize("mode", [None, "auto", "on"])
def test_devnet_hosters_get_its_compile_mode(tmp_path, mode):
    """A devnet's hosters run `--compile-mode off` unless the devnet is told otherwise: N background
    compiles at once on one machine would take the cores from the first epochs (a lone hoster: auto)."""
    from types import SimpleNamespace

    from subnet.node.assembly import NodeOptions
    from subnet.node.cli import _build_parser, apply_node_config
    from subnet.node.devnet import Devnet, DevnetOptions, _Member

    d = Devnet(DevnetOptions(workdir=str(tmp_path), **({"compile_mode": mode} if mode else {})))
    d.model_path, d.subnet_id, d.chain_proc = "m", 1, SimpleNamespace(url="http://127.0.0.1:1")
    hoster = _Member("hoster-1", "hoster", None, None, None, tmp_path, blocks=(0, 4))
    validator = _Member("validator-1", "validator", None, None, None, tmp_path)
    argv = d._node_argv(hoster, ["/ip4/127.0.0.1/tcp/1/p2p/x"])[3:]
    parser = _build_parser()
    opts = NodeOptions.from_args(apply_node_config(parser, parser.parse_known_args(argv)[0], argv))
    assert opts.hoster and opts.compile_mode == (mode or "off")
    assert "--compile-mode" not in d._node_argv(validator, [])
