"""The official openai client against the API backed by a real local swarm (hoster processes)."""

from __future__ import annotations

import os
import tempfile
from types import SimpleNamespace

import openai
import pytest
import torch

pytestmark = pytest.mark.slow

SPANS = [(0, 5), (3, 8)]


@pytest.fixture(scope="module")
def swarm_api(tiny_llama):
    from api_support import live_server

    from subnet.api import create_app
    from subnet.api.swarm_backend import SwarmBackend
    from subnet.node.procs import ManagedProcess, python_module_argv, stop_all
    from subnet.swarm.dht import start_dht, visible_maddrs

    bootstrap = start_dht()
    peers = visible_maddrs(bootstrap)
    logdir = tempfile.mkdtemp(prefix="mesh-api-swarm-")
    procs = []
    backend = None
    metrics = []  # each hoster's Prometheus /metrics (prefix reuse tests read its counters)
    try:
        for i, (a, b) in enumerate(SPANS):
            metrics.append(f"http://127.0.0.1:{_free_port()}/metrics")
            argv = python_module_argv("hoster", "--model", tiny_llama, "--model-name", "swarm-llama",
                                      "--blocks", f"{a}:{b}", "--initial-peers",
                                      *peers, "--no-progress", "--log-level", "WARNING", "--announce-period", "2",
                                      "--metrics-port", metrics[-1].split(":")[2].split("/")[0])
            procs.append(ManagedProcess(f"hoster{i}", argv, log_path=os.path.join(logdir, f"hoster{i}.log"),
                                        env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}))
        for p in procs:
            p.wait_ready(120)
        backend = SwarmBackend.from_pretrained(tiny_llama, peers, model_name="swarm-llama")
        backend._models["swarm-llama"].wait_until_servable(60)
        with live_server(create_app(backend, max_tokens_limit=1500)) as url:
            yield SimpleNamespace(url=url, backend=backend, peers=peers, metrics=metrics)
    finally:
        if backend is not None:
            backend.close()
        stop_all(procs)
        bootstrap.shutdown()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_swarm_models_and_greedy_matches_local_transformers(swarm_api, tiny_llama):
    from transformers import AutoModelForCausalLM

    url, backend = swarm_api.url, swarm_api.backend
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
    assert [m.id for m in client.models.list().data] == ["swarm-llama"]
    r = client.completions.create(model="swarm-llama", prompt="The quick brown", max_tokens=12, temperature=0)
    tok = backend.tokenizer("swarm-llama")
    ids = tok.encode("The quick brown")
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    out = hf.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids):].tolist()
    if tok.eos_token_id in out:
        out = out[: out.index(tok.eos_token_id)]
    assert r.choices[0].text == tok.decode(out, skip_special_tokens=True)
    assert r.usage.completion_tokens == len(out)


def test_swarm_chat_streaming(swarm_api):
    url = swarm_api.url
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
    full = client.chat.completions.create(model="swarm-llama", messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=10, temperature=0)
    chunks = list(client.chat.completions.create(
        model="swarm-llama", messages=[{"role": "user", "content": "Hi"}], max_tokens=10, temperature=0,
        stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    seeded = [client.chat.completions.create(model="swarm-llama", messages=[{"role": "user", "content": "Hi"}],
                                             max_tokens=8, temperature=1.0, seed=7).choices[0].message.content
              for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_swarm_disconnect_closes_remote_session(swarm_api):
    import time

    import httpx

    url, backend = swarm_api.url, swarm_api.backend
    model = backend._models["swarm-llama"]
    body = {"model": "swarm-llama", "prompt": "Hello", "max_tokens": 1500, "temperature": 0.9, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data: ")
            if seen >= 4:
                break
        assert model.active_routes()  # a remote session is open while we read
    deadline = time.monotonic() + 20
    while model.active_routes():
        assert time.monotonic() < deadline, "remote session still open after the client left"
        time.sleep(0.1)
    metrics = httpx.get(url + "/metrics").text
    assert "mesh_api_generations_cancelled_total 1.0" in metrics


def _mesh_node() -> str:
    import sys
    from pathlib import Path

    return str(Path(sys.executable).with_name("mesh-node"))


def _stop(proc, timeout: float = 30.0) -> int | None:
    """SIGTERM, then SIGKILL the whole process group (its DHT daemons too) if it hangs."""
    import signal
    import subprocess

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers of a clean exit: none; of a hang: all
    except ProcessLookupError:
        pass
    proc.wait(10)
    return proc.returncode


def test_api_and_chat_commands_in_swarm_mode(swarm_api, tiny_llama, tmp_path):
    """`mesh-node api --initial-peers ...` and `mesh-node chat --initial-peers ...` as real processes."""
    import socket
    import subprocess
    import time

    import httpx

    peers = swarm_api.peers
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "api.log", "w")
    api = subprocess.Popen([_mesh_node(), "api", "--model", tiny_llama, "--model-name", "swarm-llama",
                            "--initial-peers", *peers, "--port", str(port)],
                           stdout=log, stderr=log, env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert api.poll() is None, (tmp_path / "api.log").read_text()[-2000:]
            try:
                if httpx.get(url + "/health", timeout=2).json()["models"] == ["swarm-llama"]:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "api did not come up"
            time.sleep(0.5)
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
        r = client.chat.completions.create(model="swarm-llama", messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=5, temperature=0)
        assert r.usage.completion_tokens >= 1
    finally:
        code = _stop(api)
        log.close()
    assert code == 0  # SIGTERM shuts down cleanly (swarm client and DHT closed)

    out_path = tmp_path / "chat.out"
    with open(out_path, "w") as out:
        chat = subprocess.Popen([_mesh_node(), "chat", "--model", tiny_llama, "--model-name", "swarm-llama",
                                 "--initial-peers", *peers, "--temperature", "0", "--max-tokens", "5"],
                                stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, text=True, env=env,
                                start_new_session=True)
        try:
            chat.stdin.write("Hello\n/exit\n")
            chat.stdin.close()
            chat.wait(180)
        finally:
            _stop(chat, timeout=5)
    text = out_path.read_text()
    assert chat.returncode == 0, text[-2000:]
    assert text.count("assistant> ") == 1
