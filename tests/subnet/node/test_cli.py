"""`mesh-node chat` and `mesh-node api` as real processes."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
from api_support import MODEL

from tests.waiting import wait_until

MESH_NODE = str(Path(sys.executable).with_name("mesh-node"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    m = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.fixture
def chat_server(local_backend, serve):
    from subnet.api import create_app

    return serve(create_app(local_backend, api_keys=["sekret"]))


def test_chat_cli_streams_keeps_history_and_clears(chat_server, local_backend):
    from subnet.api.generation import render_chat

    url = chat_server
    proc = subprocess.Popen(
        [MESH_NODE, "chat", "--url", url, "--api-key", "sekret", "--temperature", "0", "--max-tokens", "6"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        prompts: list[float] = []

        def turn(line: str) -> None:
            sessions = _metric(url, "mesh_api_generation_sessions_total")
            before = _metric(url, "mesh_api_prompt_tokens_total")
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
            wait_until(lambda: _metric(url, "mesh_api_generation_sessions_total") > sessions
                       and _metric(url, "mesh_api_active_generations") == 0)
            prompts.append(_metric(url, "mesh_api_prompt_tokens_total") - before)

        turn("hello")
        turn("hello")  # carries the first exchange
        proc.stdin.write("/clear\n")
        turn("hello")  # a fresh conversation again
        proc.stdin.write("/exit\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    tok = local_backend.tokenizer(MODEL)
    first = len(render_chat(tok, [{"role": "user", "content": "hello"}]))
    assert prompts[0] == first and prompts[2] == first
    assert prompts[1] > 2 * first  # user + assistant + user
    assert out.count("assistant> ") == 3 and "[conversation cleared]" in out


def test_chat_cli_reports_bad_key_in_one_line(chat_server):
    r = subprocess.run([MESH_NODE, "chat", "--url", chat_server, "--api-key", "wrong"], input="hi\n",
                       capture_output=True, text=True, timeout=60, env=ENV)
    assert r.returncode == 1
    assert r.stderr.strip().startswith("mesh-node: error: 401") and len(r.stderr.strip().splitlines()) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_api_command_serves_local_model_with_config_file(long_llama, tmp_path):
    port = _free_port()
    cfg = tmp_path / "mesh.toml"
    cfg.write_text(f'[api]\nport = {port}\nlocal = true\nmodel_name = "cfg-model"\napi_keys = ["k1"]\n'
                   'max_tokens_limit = 64\n')
    proc = subprocess.Popen([MESH_NODE, "api", "--config", str(cfg), "--model", long_llama],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                return httpx.get(url + "/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, "the API answers", timeout=90)
        client = openai.OpenAI(base_url=url + "/v1", api_key="k1", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["cfg-model"]
        r = client.chat.completions.create(model="cfg-model", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=4)
        assert r.usage.completion_tokens <= 4
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model="cfg-model", prompt="x", max_tokens=65)
        assert httpx.get(url + "/").status_code == 200
    finally:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert "dashboard: http://127.0.0.1" in out


def test_api_command_needs_a_backend():
    r = subprocess.run([MESH_NODE, "api", "--model", "/nonexistent"], capture_output=True, text=True, timeout=60,
                       env=ENV)
    assert r.returncode == 1 and "--initial-peers" in r.stderr
