"""`n > 1` runs as one batched generation: same samples as n separate seeded requests, one
forward step per token for all choices (counted on the local backend, not timed)."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from api_support import MODEL, live_server

CHAT = [{"role": "user", "content": "Tell me something."}]


@pytest.fixture(scope="module")
def client(local_backend):
    from subnet.api import create_app

    app = create_app(local_backend, max_concurrent_streams=4, max_prompt_tokens=512, max_tokens_limit=400)
    with live_server(app) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)


def test_n4_is_one_batch_with_the_samples_of_four_seeded_requests(client, local_backend):
    kw = dict(model=MODEL, messages=CHAT, max_tokens=12, temperature=1.0, top_p=0.95)
    # an earlier test's request may have ended with its last step still in the worker thread (a random
    # order once ran the stop-string test just before: 13 steps counted for this request's 12)
    local_backend.wait_idle()
    before = local_backend.steps_total
    batched = client.chat.completions.create(n=4, seed=40, **kw)
    steps = local_backend.steps_total - before
    assert steps <= 12  # one forward step per token for all four choices (separately: up to 48)
    separate = [client.chat.completions.create(seed=40 + i, **kw).choices[0].message.content for i in range(4)]
    assert [c.message.content for c in batched.choices] == separate
    assert len(set(separate)) > 1
    assert batched.usage.completion_tokens == sum(
        client.chat.completions.create(seed=40 + i, **kw).usage.completion_tokens for i in range(4))


def test_n3_streaming_matches_non_streaming_and_each_choice_finishes(client):
    kw = dict(model=MODEL, messages=CHAT, max_tokens=10, temperature=1.0, seed=7, n=3)
    full = client.chat.completions.create(**kw)
    text: dict[int, str] = {}
    finish: dict[int, str] = {}
    for chunk in client.chat.completions.create(stream=True, **kw):
        for c in chunk.choices:
            text[c.index] = text.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    assert [text[i] for i in range(3)] == [c.message.content for c in full.choices]
    assert [finish[i] for i in range(3)] == [c.finish_reason for c in full.choices]


def test_n_batched_with_json_schema_and_stop_strings(client):
    schema = {"type": "object", "properties": {"k": {"type": "string", "maxLength": 6}}, "required": ["k"],
              "additionalProperties": False}
    r = client.chat.completions.create(model=MODEL, messages=CHAT, n=4, temperature=1.0, seed=3, max_tokens=60,
                                       response_format={"type": "json_schema",
                                                        "json_schema": {"name": "k", "schema": schema}})
    for c in r.choices:
        assert c.finish_reason == "stop"
        jsonschema.validate(json.loads(c.message.content), schema)
    free = client.chat.completions.create(model=MODEL, messages=CHAT, n=2, temperature=0, max_tokens=20)
    stop = free.choices[0].message.content[2:4]
    cut = client.chat.completions.create(model=MODEL, messages=CHAT, n=2, temperature=0, max_tokens=20, stop=[stop])
    assert all(c.finish_reason == "stop" and stop not in c.message.content for c in cut.choices)


def test_wait_idle_waits_for_a_step_left_in_the_worker(local_backend):
    """What the step count above relies on: a step still running for a request that already ended
    is over once `wait_idle` returns."""
    import threading
    import time

    started, done = threading.Event(), []

    def leftover_step():
        started.set()
        time.sleep(0.5)
        done.append(True)

    local_backend._executor.submit(leftover_step)
    assert started.wait(10)
    local_backend.wait_idle()
    assert done == [True]
