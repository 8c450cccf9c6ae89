"""/health is liveness, /ready says whether a full route exists, and a known model without a route is a
retryable 503 (not a 404); the API's metrics time tokens and count requests by outcome."""

from __future__ import annotations

import httpx
import openai
import pytest
from api_support import MODEL
from prometheus_client.parser import text_string_to_metric_families

CHAT = [{"role": "user", "content": "Hi"}]


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_ready_and_token_metrics_with_a_serving_backend(local_backend, serve):
    from subnet.api import create_app

    url = serve(create_app(local_backend, max_concurrent_streams=3))
    r = httpx.get(url + "/ready")
    assert r.status_code == 200 and r.json() == {"status": "ready", "models": [MODEL]}
    assert httpx.get(url + "/health").json()["ready"] is True
    before = scrape(url)
    assert value(before, "mesh_api_max_concurrent_generations") == 3
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    chunks = list(client.completions.create(model=MODEL, prompt="Hello there", max_tokens=6, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    tokens = chunks[-1].usage.completion_tokens
    assert tokens >= 2
    after = scrape(url)
    assert value(after, "mesh_api_time_to_first_token_seconds_count") == \
        value(before, "mesh_api_time_to_first_token_seconds_count") + 1
    assert value(after, "mesh_api_time_per_output_token_seconds_count") == \
        value(before, "mesh_api_time_per_output_token_seconds_count") + tokens - 1
    assert value(after, "mesh_api_time_per_output_token_seconds_sum") > 0
    assert value(after, "mesh_api_backend_streams_total", outcome="finished") == \
        value(before, "mesh_api_backend_streams_total", outcome="finished") + 1
    assert value(after, "mesh_api_requests_total", endpoint="/v1/completions", status="200") == 1
    assert value(after, "mesh_api_requests_total", endpoint="/ready", status="200") == 1


@pytest.fixture(scope="module")
def uncovered_swarm(tiny_llama):
    """A SwarmBackend for a model no hoster serves: the swarm exists, the route does not."""
    from subnet.api.swarm_backend import SwarmBackend
    from subnet.swarm.dht import start_dht, visible_maddrs

    bootstrap = start_dht()
    backend = None
    try:
        backend = SwarmBackend.from_pretrained(tiny_llama, visible_maddrs(bootstrap), model_name="lonely-llama")
        yield backend
    finally:
        if backend is not None:
            backend.close()
        bootstrap.shutdown()


def test_no_route_is_503_with_retry_after_and_not_ready(uncovered_swarm, serve):
    from subnet.api import create_app

    url = serve(create_app(uncovered_swarm, retry_after=2))
    assert uncovered_swarm.known_models() == ["lonely-llama"]
    assert httpx.get(url + "/health").status_code == 200  # alive
    r = httpx.get(url + "/ready")
    assert r.status_code == 503 and r.headers["retry-after"] == "2" and r.json()["status"] == "unavailable"
    assert httpx.get(url + "/v1/models").json()["data"] == []

    for path, body in (("/v1/chat/completions", {"model": "lonely-llama", "messages": CHAT}),
                       ("/v1/completions", {"model": "lonely-llama", "prompt": "Hi", "stream": True})):
        r = httpx.post(url + path, json=body)
        assert r.status_code == 503 and r.headers["retry-after"] == "2", r.text
        assert r.json()["error"]["code"] == "model_unavailable" and r.json()["error"]["type"] == "server_error"
    r = httpx.get(url + "/v1/models/lonely-llama")
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"

    r = httpx.post(url + "/v1/chat/completions", json={"model": "never-heard-of", "messages": CHAT})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"

    # the official SDK retries a 503 (after Retry-After) and finally raises InternalServerError, not NotFoundError
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=1)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="lonely-llama", messages=CHAT)
    m = scrape(url)
    assert value(m, "mesh_api_requests_total", endpoint="/ready", status="503") == 1
    assert value(m, "mesh_api_requests_total", endpoint="/v1/chat/completions", status="503") == 3  # 1 + SDK's 2
    assert value(m, "mesh_api_requests_total", endpoint="/v1/chat/completions", status="404") == 1
