"""Bad input, auth, concurrency limits and client disconnects against a live API."""

from __future__ import annotations

import re
import threading
import time

import httpx
import openai
import pytest
from api_support import MODEL

from tests.waiting import wait_until

CHAT = [{"role": "user", "content": "Hello"}]


def _err(r: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code
    if param is not None:
        assert err["param"] == param
    return err


@pytest.fixture(scope="module")
def client(api_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=api_url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_unknown_model_is_404(api_url, client):
    _err(httpx.post(api_url + "/v1/chat/completions", json={"model": "nope", "messages": CHAT}), 404,
         "model_not_found", "model")
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="nope", prompt="x")
    assert e.value.code == "model_not_found"


@pytest.mark.parametrize(
    "body,param",
    [
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL}, "messages"),
        ({"messages": CHAT}, "model"),
        ({"model": MODEL, "messages": CHAT, "temperature": "hot"}, "temperature"),
        ({"model": MODEL, "messages": CHAT, "temperature": 3}, "temperature"),
        ({"model": MODEL, "messages": CHAT, "max_tokens": "12"}, "max_tokens"),
        ({"model": MODEL, "messages": CHAT, "max_tokens": 0}, "max_tokens"),
        ({"model": MODEL, "messages": CHAT, "n": 99}, "n"),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"model": MODEL, "messages": [{"role": "user", "content": 5}]}, None),
        ({"model": MODEL, "messages": CHAT, "stop": ["a", "b", "c", "d", "e"]}, None),
        ({"model": 7, "messages": CHAT}, "model"),
    ],
)
def test_bad_types_are_400_in_openai_shape(api_url, body, param):
    err = _err(httpx.post(api_url + "/v1/chat/completions", json=body), 400)
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param


def test_invalid_json_is_400(api_url):
    r = httpx.post(api_url + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    _err(r, 400)


def test_oversize_prompt_and_max_tokens(api_url, client):
    long = "hello world " * 400  # far over the 256-token limit of the test app
    _err(httpx.post(api_url + "/v1/chat/completions",
                    json={"model": MODEL, "messages": [{"role": "user", "content": long}]}),
         400, "context_length_exceeded", "messages")
    _err(httpx.post(api_url + "/v1/completions", json={"model": MODEL, "prompt": long}),
         400, "context_length_exceeded", "prompt")
    _err(httpx.post(api_url + "/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 10**6}),
         400, None, "max_tokens")
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=CHAT, max_completion_tokens=10**6)


def test_unknown_url_is_404_json(api_url):
    _err(httpx.get(api_url + "/v1/nothing-here"), 404, "unknown_url")


def test_health_and_metrics(api_url):
    h = httpx.get(api_url + "/health").json()
    assert h["status"] == "ok" and h["models"] == [MODEL]
    text = httpx.get(api_url + "/metrics").text
    assert "mesh_api_completion_tokens_total" in text and "mesh_api_active_generations" in text


def test_api_keys(local_backend, serve):
    from subnet.api import create_app

    url = serve(create_app(local_backend, api_keys=["k-123", "k-456"]))
    _err(httpx.get(url + "/v1/models"), 401, "missing_api_key")
    _err(httpx.get(url + "/v1/models", headers={"Authorization": "Bearer wrong"}), 401, "invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
    ok = openai.OpenAI(base_url=url + "/v1", api_key="k-456", max_retries=0)
    assert ok.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2).choices
    assert httpx.get(url + "/health").status_code == 200  # probes need no key


def _metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    m = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _settled_steps(backend, timeout: float = 10.0) -> int:
    """The step count once it stops moving. A cancelled request's step that was already running
    in the backend's thread finishes (a thread can't be interrupted), so the count may move by one
    after the slot is free; reading it at that moment made the assertions below flaky."""
    deadline = time.monotonic() + timeout
    last = backend.steps_total
    while True:
        time.sleep(0.2)
        now = backend.steps_total
        if now == last:
            return now
        assert time.monotonic() < deadline, "generation did not stop"
        last = now


def test_concurrency_limit_429_and_disconnect_cancels(local_backend, serve):
    """A long stream holds the only slot (429 + Retry-After for others); closing it stops generation."""
    from subnet.api import create_app

    url = serve(create_app(local_backend, max_concurrent_streams=1, max_tokens_limit=50000, retry_after=3))
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 50000, "temperature": 0.8, "stream": True,
            "seed": 7}  # fixed: runs 2000+ tokens without EOS (random seeds sometimes stopped early, freeing the slot)
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", url + "/v1/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            got = 0
            for line in lines:
                if line.startswith("data: "):
                    got += 1
                if got >= 5:
                    break
            # the slot is taken: a second request is refused at once
            busy = httpx.post(url + "/v1/chat/completions", json={"model": MODEL, "messages": CHAT})
            _err(busy, 429, "rate_limit_exceeded")
            assert busy.headers["retry-after"] == "3"
            with pytest.raises(openai.RateLimitError):
                openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0).chat.completions.create(
                    model=MODEL, messages=CHAT)
            steps_before_close = local_backend.steps_total
    # the client went away: generation stops and the slot frees
    wait_until(lambda: _metric(url, "mesh_api_active_generations") == 0)
    wait_until(lambda: _metric(url, "mesh_api_generations_cancelled_total") == 1)
    settled = _settled_steps(local_backend)
    time.sleep(0.5)
    assert local_backend.steps_total == settled  # nothing runs on
    assert settled - steps_before_close < 200
    assert _metric(url, 'mesh_api_completion_tokens_total') < 5000
    r = httpx.post(url + "/v1/chat/completions", json={"model": MODEL, "messages": CHAT, "max_tokens": 2})
    assert r.status_code == 200


def test_non_streaming_disconnect_cancels(local_backend, serve):
    from subnet.api import create_app

    url = serve(create_app(local_backend, max_concurrent_streams=2, max_tokens_limit=50000))
    # seed 7: no early EOS (see above)
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 50000, "temperature": 0.8, "seed": 7}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/completions", json=body, timeout=1.0)
    wait_until(lambda: _metric(url, "mesh_api_generations_cancelled_total") == 1)
    wait_until(lambda: _metric(url, "mesh_api_active_generations") == 0)
    settled = _settled_steps(local_backend)
    time.sleep(0.5)
    assert local_backend.steps_total == settled


def test_concurrent_streams_interleave(api_url):
    """Two streams at once both complete (the backend interleaves them by token)."""
    results: list[str] = []

    def one(seed: int) -> None:
        c = openai.OpenAI(base_url=api_url + "/v1", api_key="x", max_retries=0)
        s = c.completions.create(model=MODEL, prompt="Hello", max_tokens=20, seed=seed, stream=True)
        results.append("".join(ch.choices[0].text for ch in s))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 3
