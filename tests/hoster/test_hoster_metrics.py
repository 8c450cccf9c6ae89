"""`python -m hoster --metrics-port`: a real hoster process serves Prometheus metrics that move with its work."""

from __future__ import annotations

import hoster_rpc as rh
import httpx
import pytest
import torch

from chain.devnet.process import free_port
from hoster.metrics import parse_samples
from hoster.server import own_p2p_replica
from subnet.node.procs import ManagedProcess, python_module_argv

pytestmark = pytest.mark.slow


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    return parse_samples(httpx.get(url, timeout=10).text)


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_hoster_metrics_move_with_sessions_and_forwards(tiny_llama, tmp_path, client_dht_factory):
    port = free_port()
    proc = ManagedProcess("hoster", python_module_argv(
        "hoster", "--model", tiny_llama, "--blocks", "0:8", "--model-name", "metrics-test", "--cache-tokens", "100",
        "--no-progress", "--metrics-port", str(port)), log_path=tmp_path / "hoster.log")
    try:
        _, peer, maddr = proc.wait_ready(120).split()
        url = f"http://127.0.0.1:{port}/metrics"
        before = scrape(url)
        for name in ("mesh_hoster_sessions", "mesh_hoster_kv_tokens_used", "mesh_hoster_queue_depth",
                     "mesh_hoster_open_streams", "mesh_hoster_step_seconds_count"):
            assert any(k[0] == name for k in before), name
        assert value(before, "mesh_hoster_kv_tokens_budget") == 100
        assert value(before, "mesh_hoster_state", state="online") == 1
        assert value(before, "mesh_hoster_sessions") == 0

        dht = client_dht_factory([maddr])
        p2p = await own_p2p_replica(dht)
        try:
            s = rh.Stream(p2p, peer)
            await s.open("metrics-test", 0, 8, max_length=16)
            await s.step(torch.randn(1, 3, 64), 0)  # prefill
            await s.step(torch.randn(1, 1, 64), 3)  # decode
            during = scrape(url)
            assert value(during, "mesh_hoster_sessions") == 1
            assert value(during, "mesh_hoster_open_streams") == 1
            assert value(during, "mesh_hoster_kv_tokens_used") == 4
            assert value(during, "mesh_hoster_kv_bytes") > 0
            await s.close()
            await rh.forward(p2p, peer, "metrics-test", 0, 8, torch.randn(1, 2, 64))
            with pytest.raises(rh.RemoteError):
                await rh.forward(p2p, peer, "metrics-test", 0, 9, torch.randn(1, 2, 64))
        finally:
            await p2p.shutdown()

        after = scrape(url)
        assert value(after, "mesh_hoster_requests_total", rpc="inference_open", outcome="ok") == 1
        assert value(after, "mesh_hoster_requests_total", rpc="inference_step", outcome="ok") == 2
        assert value(after, "mesh_hoster_requests_total", rpc="forward", outcome="ok") == 1
        assert value(after, "mesh_hoster_requests_total", rpc="forward", outcome="out_of_range") == 1
        assert value(after, "mesh_hoster_step_seconds_count", kind="prefill") == 1
        assert value(after, "mesh_hoster_step_seconds_count", kind="decode") == 1
        assert value(after, "mesh_hoster_decode_rounds_total", sessions="1") == 1  # the one decode step, alone
        assert value(after, "mesh_hoster_forward_seconds_count") == 1
        # 3 + 1 positions in, 3 + 1 positions out, float32 x 64: the tensors dominate the byte counts
        assert value(after, "mesh_hoster_received_bytes_total", rpc="inference") > 4 * 64 * 4
        assert value(after, "mesh_hoster_sent_bytes_total", rpc="inference") > 4 * 64 * 4
        assert value(after, "mesh_hoster_received_bytes_total", rpc="forward") > 2 * 2 * 64 * 4
        assert value(after, "mesh_hoster_sent_bytes_total", rpc="forward") > 2 * 64 * 4
        for _ in range(50):  # the session is freed once the servicer sees the close
            if value(after, "mesh_hoster_sessions") == 0:
                break
            after = scrape(url)
        assert value(after, "mesh_hoster_sessions") == 0 and value(after, "mesh_hoster_kv_tokens_used") == 0
    finally:
        proc.stop()
    log = (tmp_path / "hoster.log").read_text()
    assert f"metrics_serving url=http://127.0.0.1:{port}/metrics" in log and "Traceback" not in log


def test_step_path_metrics_say_how_decode_steps_ran():
    """Rounds by batch size, each compiled graph's outcomes and small steps' threads, read from the backend
    at scrape time."""
    from collections import Counter
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry, generate_latest

    from hoster.metrics import _HosterState

    one = SimpleNamespace(steps=40, busy=3, fallbacks=1)
    backend = SimpleNamespace(start=0, end=8, decode_rounds=Counter({1: 5, 8: 12}), compiled=one,
                              auto=SimpleNamespace(batches=SimpleNamespace(steps=9, busy=2, fallbacks=0),
                                                   bucket_states=lambda: {2: "served", 4: "compiling", 8: "eager"}),
                              threads=SimpleNamespace(announced=1))
    registry = CollectorRegistry()
    registry.register(_HosterState(SimpleNamespace(backend=backend, model_uid="m", peer_id="p")))
    samples = parse_samples(generate_latest(registry).decode())
    assert value(samples, "mesh_hoster_decode_rounds_total", sessions="8") == 12
    assert value(samples, "mesh_hoster_decode_rounds_total", sessions="1") == 5
    assert value(samples, "mesh_hoster_compiled_steps_total", graph="one_session", outcome="compiled") == 40
    assert value(samples, "mesh_hoster_compiled_steps_total", graph="one_session", outcome="busy") == 3
    assert value(samples, "mesh_hoster_compiled_steps_total", graph="bucket", outcome="compiled") == 9
    assert value(samples, "mesh_hoster_batch_bucket", bucket="4", state="compiling") == 1
    assert value(samples, "mesh_hoster_batch_bucket", bucket="4", state="served") == 0
    assert value(samples, "mesh_hoster_batch_bucket", bucket="2", state="served") == 1
    assert value(samples, "mesh_hoster_decode_threads") == 1  # hoster.decode_threads
    backend.auto = None  # eager hoster: no bucket samples
    samples = parse_samples(generate_latest(registry).decode())
    assert not any(name == "mesh_hoster_compiled_steps_total" and ("graph", "bucket") in labels
                   for name, labels in samples)
