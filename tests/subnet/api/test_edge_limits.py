"""Regression tests for cheap attacks on the API's edge: bodies without a length, work before
auth, work before admission, text that is not Unicode."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import time
from urllib.parse import urlparse

import httpx
import pytest
from api_support import MODEL

from subnet.api import create_app

CHAT = [{"role": "user", "content": "Hello"}]
LIMIT = 1 << 20  # 1 MiB bodies for these apps
SEND_AT_MOST = 64 << 20  # what an attacker would push; bounded so the test is too


def _err(r: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code
    if param is not None:
        assert err["param"] == param
    return err


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _push_chunked(url: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, int]:
    """Stream a chunked body of junk until the server answers; (status, bytes sent before the answer).

    Bounded: at most SEND_AT_MOST bytes and 30 s.
    """
    u = urlparse(url)
    sock = socket.create_connection((u.hostname, u.port), timeout=10)
    try:
        head = f"POST {path} HTTP/1.1\r\nHost: {u.hostname}\r\nContent-Type: application/json\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        sock.sendall((head + "Transfer-Encoding: chunked\r\n\r\n").encode())
        chunk = b"x" * (64 << 10)
        framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        sent, deadline = 0, time.monotonic() + 30
        while sent < SEND_AT_MOST and time.monotonic() < deadline:
            if select.select([sock], [], [], 0)[0]:
                break  # the server has answered
            try:
                sock.sendall(framed)
            except OSError:  # the server closed the connection after answering
                break
            sent += len(chunk)
        sock.settimeout(10)
        status_line = sock.recv(4096).split(b"\r\n", 1)[0].decode()
        return int(status_line.split()[1]), sent
    finally:
        sock.close()


@pytest.fixture(scope="module")
def keyed_url(local_backend):
    from api_support import live_server

    app = create_app(local_backend, api_keys=["k-1"], max_body_bytes=LIMIT, max_concurrent_streams=1)
    with live_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def open_url(local_backend):
    from api_support import live_server

    app = create_app(local_backend, max_body_bytes=LIMIT, max_prompt_tokens=256)
    with live_server(app) as url:
        yield url


def test_chunked_body_over_the_limit_is_413_before_it_is_read(open_url):
    before = _rss_bytes()
    status, sent = _push_chunked(open_url, "/v1/chat/completions")
    assert status == 413
    assert sent < 16 * LIMIT, f"the server read {sent} bytes before refusing"
    assert _rss_bytes() - before < 48 << 20
    assert httpx.get(open_url + "/health").status_code == 200


def test_chunked_body_within_the_limit_still_works(open_url):
    body = json.dumps({"model": MODEL, "messages": CHAT, "max_tokens": 2}).encode()
    r = httpx.post(open_url + "/v1/chat/completions", content=iter([body[:10], body[10:]]),
                   headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 200, r.text


def test_missing_key_is_401_before_the_body_is_read(keyed_url):
    before = _rss_bytes()
    status, sent = _push_chunked(keyed_url, "/v1/chat/completions")
    assert status == 401
    assert sent < 16 * LIMIT
    assert _rss_bytes() - before < 48 << 20
    status, sent = _push_chunked(keyed_url, "/v1/chat/completions", {"Authorization": "Bearer wrong"})
    assert status == 401 and sent < 16 * LIMIT


@pytest.mark.parametrize("path,body,param", [
    ("/v1/chat/completions", '{"model": "%s", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
     "messages.0.content"),
    ("/v1/chat/completions", '{"model": "%s", "messages": [{"role": "user", "content": [{"type": "text", '
                             '"text": "\\udfff"}]}]}', None),
    ("/v1/completions", '{"model": "%s", "prompt": "\\ud800"}', None),
    ("/v1/completions", '{"model": "%s", "prompt": "hi", "stop": ["\\ud83d"]}', None),
])
def test_lone_surrogates_are_400(open_url, path, body, param):
    r = httpx.post(open_url + path, content=(body % MODEL).encode(), headers={"Content-Type": "application/json"})
    err = _err(r, 400, param=param)
    assert "Unicode" in err["message"] or "surrogate" in err["message"]


def test_too_many_messages_is_400(open_url):
    body = {"model": MODEL, "messages": [{"role": "user", "content": ""}] * 5000}
    _err(httpx.post(open_url + "/v1/chat/completions", json=body), 400, param="messages")


class _SlowCountingBackend:
    """The real backend, counting how often a request asks for the tokenizer (= prepares), and
    streaming slowly so the slot stays taken however soon the model samples EOS."""

    def __init__(self, inner):
        self.inner = inner
        self.tokenizer_calls = 0

    def tokenizer(self, model):
        self.tokenizer_calls += 1
        return self.inner.tokenizer(model)

    async def stream(self, *args, **kwargs):
        async for event in self.inner.stream(*args, **kwargs):
            await asyncio.sleep(0.05)
            yield event

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_requests_over_the_limit_are_refused_before_preparation(local_backend, serve):
    backend = _SlowCountingBackend(local_backend)
    url = serve(create_app(backend, max_concurrent_streams=1, max_tokens_limit=50000))
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 50000, "temperature": 0.8, "stream": True, "seed": 7}
    with httpx.Client(timeout=30) as http, http.stream("POST", url + "/v1/completions", json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()  # keep a reference: a collected iterator closes the response
        next(line for line in lines if line.startswith("data: "))
        prepared = backend.tokenizer_calls
        heavy = {"model": MODEL, "messages": [{"role": "user", "content": "x " * 1000}] * 500}
        _err(httpx.post(url + "/v1/chat/completions", json=heavy), 429, "rate_limit_exceeded")
        assert backend.tokenizer_calls == prepared  # refused without templating or tokenizing
