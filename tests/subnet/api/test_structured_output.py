"""response_format json_object / json_schema through the official openai client (local backend).

The tiny model has random weights, so only the grammar stands between it and garbage: every
completed output parsing and validating is the grammar's doing.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest
from api_support import MODEL, live_server

CHAT = [{"role": "user", "content": "Describe a person as JSON."}]
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "role": {"enum": ["hoster", "validator", "client"]},
        "active": {"type": "boolean"},
        "scores": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}, "maxItems": 3},
        "home": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 6}},
                 "required": ["city"], "additionalProperties": False},
        "nickname": {"anyOf": [{"type": "string", "maxLength": 5}, {"type": "null"}]},
    },
    "required": ["name", "age", "role", "active", "scores", "home", "nickname"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}


@pytest.fixture(scope="module")
def client(local_backend):
    from subnet.api import create_app

    app = create_app(local_backend, max_concurrent_streams=4, max_prompt_tokens=4096, max_tokens_limit=4000)
    with live_server(app) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)


def _person(client, seed: int, n: int = 1, **kw) -> list[tuple[str, str]]:
    r = client.chat.completions.create(model=MODEL, messages=CHAT, response_format=FORMAT, max_tokens=400,
                                       temperature=1.0, seed=seed, n=n, **kw)
    return [(c.message.content, c.finish_reason) for c in r.choices]


def test_100_sampled_json_schema_generations_all_validate(client):
    """100 sampled generations: 13 requests (varied sampling knobs) of up to 8 choices, each choice
    a row of one batched generation with its own seed."""
    knobs = [{}, {"top_p": 0.9}, {"extra_body": {"top_k": 20}}, {"presence_penalty": 1.5},
             {"extra_body": {"min_p": 0.05, "repetition_penalty": 1.3}}]
    jobs = [(8 * i, min(8, 100 - 8 * i), knobs[i % len(knobs)]) for i in range(13)]
    with ThreadPoolExecutor(2) as pool:
        results = [r for rs in pool.map(lambda j: _person(client, j[0], j[1], **j[2]), jobs) for r in rs]
    assert len(results) == 100
    outputs = set()
    for text, finish in results:
        assert finish == "stop", text  # the grammar completed and forced the end of sequence
        value = json.loads(text)  # nothing after the closing brace
        jsonschema.validate(value, SCHEMA)
        outputs.add(text)
    assert len(outputs) > 90  # really sampled, not one answer repeated


def test_json_schema_streaming_validates_and_matches_non_streaming(client):
    [(full, _)] = _person(client, 11)
    chunks = list(client.chat.completions.create(model=MODEL, messages=CHAT, response_format=FORMAT,
                                                 max_tokens=400, temperature=1.0, seed=11, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == full
    jsonschema.validate(json.loads(streamed), SCHEMA)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_json_schema_with_logprobs_reports_only_allowed_tokens(client):
    r = client.chat.completions.create(model=MODEL, messages=CHAT, response_format=FORMAT, max_tokens=400,
                                       temperature=0, logprobs=True, top_logprobs=3)
    jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)
    first = r.choices[0].logprobs.content[0]
    assert first.token == "{" and first.logprob == pytest.approx(0.0, abs=1e-5)  # the only allowed token
    assert all(t.logprob <= -9000 for t in first.top_logprobs[1:])  # masked alternatives


def test_json_object_parses(local_backend, client):
    close = local_backend.tokenizer(MODEL).convert_tokens_to_ids("}")
    for seed in range(3):
        r = client.chat.completions.create(model=MODEL, messages=CHAT, response_format={"type": "json_object"},
                                           max_tokens=300, temperature=1.0, seed=seed,
                                           logit_bias={str(close): 8})  # nudge the random model to close
        assert r.choices[0].finish_reason == "stop"
        assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_truncated_json_is_finish_reason_length(client):
    r = client.chat.completions.create(model=MODEL, messages=CHAT, response_format=FORMAT, max_tokens=4,
                                       temperature=0)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 4
    assert r.choices[0].message.content.startswith("{")
    chunks = list(client.chat.completions.create(model=MODEL, messages=CHAT, response_format=FORMAT, max_tokens=4,
                                                 temperature=0, stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


@pytest.mark.parametrize("fmt,param,code", [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "(?<=a)b"}}},
     "response_format.json_schema.schema", "unsupported_json_schema"),  # look-behind: cannot be compiled
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {
        "$ref": "#/$defs/missing"}}}}}, "response_format.json_schema.schema", "unsupported_json_schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}},
     "response_format.json_schema.schema", "invalid_json_schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": ["not", "an", "object"]}},
     "response_format.json_schema.schema", "invalid_json_schema"),
    ({"type": "json_schema", "json_schema": {"name": "bad name", "schema": {}}},
     "response_format.json_schema.name", "invalid_value"),
    ({"type": "json_schema"}, "response_format.json_schema", "invalid_value"),
    ({"type": "xml"}, "response_format.type", "invalid_value"),
    ({"type": "json_object", "colour": 1}, "response_format.colour", "unknown_parameter"),
])
def test_bad_response_formats_are_clear_400s_and_the_server_keeps_serving(client, fmt, param, code):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=CHAT, response_format=fmt, max_tokens=4)
    assert e.value.body["param"] == param and e.value.body["code"] == code, e.value.body
    assert e.value.body["message"]
    ok = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2)
    assert ok.choices[0].finish_reason in ("stop", "length")
