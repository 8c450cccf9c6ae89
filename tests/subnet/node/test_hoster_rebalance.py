"""`mesh-node --hoster` takes every hoster option (so devnet hosters rebalance), and a devnet
hoster moves when a peer leaves and some blocks lose their last hoster."""

from __future__ import annotations

import time

import pytest

from subnet.node.devnet import HOSTER_REBALANCE_INTERVAL, hoster_flags, overlapping_ranges
from subnet.node.procs import ManagedProcess, python_module_argv, stop_all


def _node_options(argv: list[str]):
    from subnet.node.assembly import NodeOptions
    from subnet.node.cli import _build_parser, apply_node_config

    parser = _build_parser()
    return NodeOptions.from_args(apply_node_config(parser, parser.parse_known_args(argv)[0], argv))


def test_devnet_hosters_start_from_their_range_and_rebalance():
    opts = _node_options(["--model", "m", *hoster_flags((2, 6))])
    assert opts.hoster and opts.blocks == "2:6" and opts.rebalance_interval == HOSTER_REBALANCE_INTERVAL
    assert opts.hoster_kwargs()["start"] == 2


def test_every_hoster_option_is_a_config_key(tmp_path):
    """The TOML keys are the argparse destinations, so options new to `mesh-node` work from the file too."""
    cfg = tmp_path / "mesh.toml"
    cfg.write_text('[node]\nhoster = true\nmodel = "m"\nrebalance_interval = 5\ngather_window = 0.01\n'
                   'throughput = 3.5\nprogress = false\nannounce_ttl = 30\n')
    opts = _node_options(["--config", str(cfg)])
    assert (opts.rebalance_interval, opts.gather_window, opts.throughput) == (5.0, 0.01, 3.5)
    assert opts.progress is False and opts.announce_ttl == 30.0


def _ranges(dht, uid: str) -> dict[str, tuple[int, int]]:
    from subnet.swarm.announcements import read_announcements

    return {a.peer_id: (a.start, a.end) for a in read_announcements(dht, uid) if a.state == "online"}


def _wait_for(dht, uid: str, want: dict[str, tuple[int, int]], timeout: float) -> dict[str, tuple[int, int]]:
    deadline = time.monotonic() + timeout
    seen: dict[str, tuple[int, int]] = {}
    while time.monotonic() < deadline:
        seen = _ranges(dht, uid)
        if seen == want:
            return seen
        time.sleep(0.5)
    raise AssertionError(f"announced ranges {seen}, wanted {want}")


@pytest.mark.slow
def test_devnet_hoster_moves_to_restore_coverage(tmp_path, tiny_llama):
    """Devnet ranges over 8 blocks: a 0:4, b 2:6, c 4:8. When a leaves, blocks 0:2 have no hoster;
    b (whose 2:6 is also half served by c) moves to 0:4 and c stays."""
    from keys import NodeKey
    from subnet.model.blocks import model_uid
    from subnet.swarm.dht import start_dht, visible_maddrs

    uid = model_uid(tiny_llama, "rebalance-devnet")
    dht = start_dht(NodeKey.generate())
    procs: list[ManagedProcess] = []

    def hoster(name: str, blocks: tuple[int, int]) -> ManagedProcess:
        argv = python_module_argv(
            "subnet.node.cli", "--model", tiny_llama, "--model-name", "rebalance-devnet",
            *hoster_flags(blocks, rebalance_interval=1.0), "--throughput", "10", "--cache-tokens", "64",
            "--no-progress", "--initial-peers", *visible_maddrs(dht))
        proc = ManagedProcess(name, argv, log_path=tmp_path / f"{name}.log")
        procs.append(proc)
        return proc

    try:
        a_range, b_range, c_range = overlapping_ranges(8, 3)
        assert (a_range, b_range, c_range) == ((0, 4), (2, 6), (4, 8))
        # b last: a hoster that sees only part of the swarm may rightly move before the others join.
        a, c = hoster("a", a_range), hoster("c", c_range)
        peer = {name: p.wait_ready(timeout=180).split()[1] for name, p in (("a", a), ("c", c))}
        peer["b"] = hoster("b", b_range).wait_ready(timeout=180).split()[1]
        _wait_for(dht, uid, {peer["a"]: a_range, peer["b"]: b_range, peer["c"]: c_range}, timeout=60)

        assert "rebalance_start" not in (tmp_path / "b.log").read_text()  # full coverage: nobody moves
        a.stop()  # SIGTERM: a withdraws its announcement
        _wait_for(dht, uid, {peer["b"]: (0, 4), peer["c"]: c_range}, timeout=120)
    finally:
        stop_all(procs)
        dht.shutdown()
    log = (tmp_path / "b.log").read_text()
    assert "rebalanced" in log and "Traceback" not in log, log[-3000:]
    assert "rebalanced" not in (tmp_path / "c.log").read_text()
