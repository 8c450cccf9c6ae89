"""`mesh-node --hoster --validator --api --metrics-port`: one registry per node, served on the metrics port and
by the API's /metrics; validator counters move as epochs pass, hoster counters as the API generates."""

from __future__ import annotations

import socket
import sys
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from subnet.node.procs import ManagedProcess
from tests.validator.support import ChainNet

pytestmark = pytest.mark.slow


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(url, timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_node_metrics_cover_every_role(tmp_path, tiny_llama):
    net = ChainNet(tmp_path, block_time=0.25, epoch_length=20)
    proc = None
    try:
        op = net.add_operator()
        op.node_key.save(tmp_path / "node.key")
        op.hotkey.save(tmp_path / "hot.json")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = ManagedProcess("node", [
            sys.executable, "-m", "subnet.node.cli", "--hoster", "--validator", "--api", "--model", tiny_llama,
            "--model-name", "metrics-llama", "--blocks", "0:8", "--no-progress", "--chain", net.url,
            "--subnet-id", str(net.subnet_id), "--account-key", str(tmp_path / "hot.json"),
            "--node-key", str(tmp_path / "node.key"), "--metrics-port", str(port)], log_path=tmp_path / "node.log")
        api_url = proc.wait_ready(180).split()[3]
        # Activate only now: as the subnet's only node it is elected every epoch, and each epoch it
        # spent starting up (15-40 s on a busy machine) would cut its reputation until the chain
        # removed it ("signer ... is not a node of subnet 1").
        net.activate()
        url = f"http://127.0.0.1:{port}/metrics"
        first = scrape(url)
        assert value(first, "mesh_hoster_state", state="online") == 1
        assert value(first, "mesh_api_max_concurrent_generations") > 0  # the API's metrics: same registry

        client = openai.OpenAI(base_url=api_url + "/v1", api_key="x", max_retries=5, timeout=120)
        r = client.completions.create(model="metrics-llama", prompt="Hello", max_tokens=4, temperature=0)
        assert r.usage.completion_tokens >= 1

        deadline = time.monotonic() + 120
        m = scrape(url)
        # the first epoch may be scored without this hoster's commit (it joined mid-epoch): wait for one with it
        while not (value(m, "mesh_validator_epochs_scored_total") >= 1 and value(m, "mesh_validator_proposals_total")
                   >= 1 and value(m, "mesh_validator_score_commits_total") >= 1
                   and value(m, "mesh_validator_reveals_seen_total", kind="hoster", status="valid") >= 1):
            assert time.monotonic() < deadline, {k: v for k, v in m.items() if k[0].startswith("mesh_validator")}
            time.sleep(0.5)
            m = scrape(url)
        assert value(m, "mesh_validator_epoch") >= 1
        phases = ("propose", "commit", "reveal", "score")
        assert sum(value(m, "mesh_validator_epoch_phase", phase=p) for p in phases) == 1
        assert value(m, "mesh_validator_probes_seen_total") >= 1
        assert value(m, "mesh_validator_hoster_commits_seen_total") >= 1
        assert value(m, "mesh_validator_last_scored_epoch") >= 1
        steps = value(m, "mesh_hoster_requests_total", rpc="inference_step", outcome="ok")
        assert steps >= 1 and steps == sum(value(m, "mesh_hoster_step_seconds_count", kind=k)
                                           for k in ("prefill", "decode"))
        assert value(m, "mesh_api_requests_total", endpoint="/v1/completions", status="200") >= 1
        api_text = httpx.get(api_url + "/metrics", timeout=10).text  # the API shows every role too
        assert "mesh_validator_epochs_scored_total" in api_text and "mesh_hoster_kv_tokens_budget" in api_text
        assert httpx.get(api_url + "/ready", timeout=10).status_code == 200
    finally:
        if proc is not None:
            proc.stop(30)
        net.close()
    log = (tmp_path / "node.log").read_text()
    assert "metrics_serving" in log and "Traceback" not in log
