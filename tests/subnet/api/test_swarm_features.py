"""Structured output and tool calls through a live swarm (hoster processes) with the official
openai client and LangChain: the grammar masks the client's logits, the blocks run remotely."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from test_swarm_api import swarm_api  # noqa: F401  (the module-scoped live swarm fixture)

pytestmark = pytest.mark.slow

SCHEMA = {"type": "object", "properties": {"word": {"type": "string", "maxLength": 8},
                                           "n": {"type": "integer", "minimum": 0, "maximum": 999},
                                           "ok": {"type": "boolean"}},
          "required": ["word", "n", "ok"], "additionalProperties": False}
FORMAT = {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA, "strict": True}}
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"key": {"type": "string", "maxLength": 8}}, "required": ["key"],
    "additionalProperties": False}}}
CHAT = [{"role": "user", "content": "Hi"}]


def test_swarm_json_schema_sampled_and_streamed_validate(swarm_api):  # noqa: F811
    client = openai.OpenAI(base_url=swarm_api.url + "/v1", api_key="x", max_retries=0, timeout=300)
    for seed in range(5):
        r = client.chat.completions.create(model="swarm-llama", messages=CHAT, response_format=FORMAT,
                                           max_tokens=120, temperature=1.0, seed=seed)
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)
    chunks = list(client.chat.completions.create(model="swarm-llama", messages=CHAT, response_format=FORMAT,
                                                 max_tokens=120, temperature=1.0, seed=0, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jsonschema.validate(json.loads(text), SCHEMA)


def test_swarm_tool_round_trip_and_langchain(swarm_api):  # noqa: F811
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    client = openai.OpenAI(base_url=swarm_api.url + "/v1", api_key="x", max_retries=0, timeout=300)
    first = client.chat.completions.create(model="swarm-llama", messages=CHAT, tools=[TOOL], tool_choice="required",
                                           max_tokens=120, temperature=1.0, seed=1)
    msg = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls" and msg.tool_calls[0].function.name == "lookup"
    assert isinstance(json.loads(msg.tool_calls[0].function.arguments)["key"], str)
    turns = CHAT + [msg.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": "found"}]
    final = client.chat.completions.create(model="swarm-llama", messages=turns, tools=[TOOL], max_tokens=6)
    assert isinstance(final.choices[0].message.content, str)

    class Thing(BaseModel):
        word: str = Field(max_length=8)
        ok: bool

    llm = ChatOpenAI(model="swarm-llama", base_url=swarm_api.url + "/v1", api_key="x", max_tokens=120,
                     temperature=0, max_retries=0, timeout=300)
    assert isinstance(llm.with_structured_output(Thing).invoke("Name a thing."), Thing)
    ai = llm.bind_tools([TOOL], tool_choice="lookup").invoke("Look something up.")
    assert ai.tool_calls and ai.tool_calls[0]["name"] == "lookup"


def test_swarm_embeddings_match_local_transformers(swarm_api, tiny_llama):  # noqa: F811
    import torch
    from transformers import AutoModelForCausalLM

    client = openai.OpenAI(base_url=swarm_api.url + "/v1", api_key="x", max_retries=0, timeout=300)
    texts = ["The quick brown fox", "Hi", "Hello world"]  # two lengths: two batched sessions
    r = client.embeddings.create(model="swarm-llama", input=texts)
    tok = swarm_api.backend.tokenizer("swarm-llama")
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    for text, d in zip(texts, r.data, strict=True):
        with torch.inference_mode():
            h = hf(torch.tensor([tok.encode(text)]), output_hidden_states=True).hidden_states[-1][0]
        ref = torch.nn.functional.normalize(h.mean(0), dim=-1)
        assert torch.allclose(torch.tensor(d.embedding), ref, atol=1e-3)
    direct = swarm_api.backend._models["swarm-llama"].embed([tok.encode(texts[1])])  # the client model's method
    assert torch.allclose(direct[0], torch.tensor(r.data[1].embedding), atol=1e-5)


def test_swarm_n_choices_decode_as_one_batched_session(swarm_api):  # noqa: F811
    client = openai.OpenAI(base_url=swarm_api.url + "/v1", api_key="x", max_retries=0, timeout=300)
    kw = dict(model="swarm-llama", messages=CHAT, max_tokens=10, temperature=1.0)
    batched = client.chat.completions.create(n=3, seed=21, **kw)
    separate = [client.chat.completions.create(seed=21 + i, **kw).choices[0].message.content for i in range(3)]
    assert [c.message.content for c in batched.choices] == separate
