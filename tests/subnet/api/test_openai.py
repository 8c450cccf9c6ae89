"""The official `openai` client against a live API (uvicorn on 127.0.0.1, real tiny model)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
import torch
from api_support import MODEL

CHAT = [{"role": "user", "content": "Hello, how are you?"}]


@pytest.fixture(scope="module")
def client(api_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=api_url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _hf_greedy(backend, prompt_ids: list[int], n: int) -> list[int]:
    out = backend.model.generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False)
    return out[0, len(prompt_ids):].tolist()


def test_models_lists_the_served_model(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_greedy_equals_transformers_generate(client, local_backend):
    r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=24, temperature=0)
    tok = local_backend.tokenizer(MODEL)
    prompt = tok.encode(tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False),
                        add_special_tokens=False)
    expected_ids = _hf_greedy(local_backend, prompt, 24)
    eos = tok.eos_token_id
    if eos in expected_ids:
        expected_ids = expected_ids[: expected_ids.index(eos)]
    assert r.choices[0].message.content == tok.decode(expected_ids, skip_special_tokens=True)
    assert r.choices[0].message.role == "assistant"
    assert r.object == "chat.completion"
    assert r.usage.prompt_tokens == len(prompt)
    assert r.usage.completion_tokens == len(expected_ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.choices[0].finish_reason == ("length" if len(expected_ids) == 24 else "stop")


def test_chat_stream_matches_non_stream_and_reports_usage(client):
    full = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=30, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=30, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1 and chunks[0].object == "chat.completion.chunk"


def test_raw_sse_framing(api_url):
    body = {"model": MODEL, "messages": CHAT, "max_tokens": 5, "stream": True}
    with httpx.stream("POST", api_url + "/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    for e in events[:-2]:
        assert e.startswith("data: {")
        json.loads(e[len("data: "):])


def test_completions_stream_and_not(client):
    r = client.completions.create(model=MODEL, prompt="The quick brown", max_tokens=12, temperature=0)
    assert r.object == "text_completion" and r.choices[0].finish_reason in ("length", "stop")
    parts = list(client.completions.create(model=MODEL, prompt="The quick brown", max_tokens=12, temperature=0,
                                           stream=True))
    assert "".join(p.choices[0].text for p in parts) == r.choices[0].text
    assert parts[-1].choices[0].finish_reason == r.choices[0].finish_reason


def test_max_tokens_gives_length(client):
    r = client.completions.create(model=MODEL, prompt="Hello", max_tokens=7, temperature=0,
                                  frequency_penalty=0.0)
    if r.choices[0].finish_reason == "length":
        assert r.usage.completion_tokens == 7
    c = client.chat.completions.create(model=MODEL, messages=CHAT, max_completion_tokens=3, temperature=0)
    assert c.usage.completion_tokens <= 3


def test_seed_reproducible_and_n_choices(client):
    kw = dict(model=MODEL, prompt="Validators post probes", max_tokens=16, temperature=1.0, top_p=0.9, n=3)
    a = client.completions.create(seed=1234, **kw)
    b = client.completions.create(seed=1234, **kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert len({c.text for c in a.choices}) > 1  # each choice has its own seed
    streamed = list(client.completions.create(seed=1234, stream=True, **kw))
    by_index: dict[int, str] = {}
    for ch in streamed:
        for c in ch.choices:
            by_index[c.index] = by_index.get(c.index, "") + c.text
    assert [by_index[i] for i in range(3)] == [c.text for c in a.choices]


def test_stop_string_cuts_output(client):
    base = client.completions.create(model=MODEL, prompt="Hello world", max_tokens=30, temperature=0)
    text = base.choices[0].text
    assert len(text) >= 6
    stop = text[3:6]
    cut = text[: text.index(stop)]
    r = client.completions.create(model=MODEL, prompt="Hello world", max_tokens=30, temperature=0,
                                  stop=[stop, "\u2603never"])
    assert r.choices[0].text == cut and r.choices[0].finish_reason == "stop"
    streamed = list(client.completions.create(model=MODEL, prompt="Hello world", max_tokens=30, temperature=0,
                                              stop=stop, stream=True))
    assert "".join(p.choices[0].text for p in streamed) == cut
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_penalties_change_greedy_output(client):
    plain = client.completions.create(model=MODEL, prompt="Hello world", max_tokens=40, temperature=0)
    penalised = client.completions.create(model=MODEL, prompt="Hello world", max_tokens=40, temperature=0,
                                          frequency_penalty=2.0, presence_penalty=2.0)
    assert penalised.choices[0].text != plain.choices[0].text


def test_token_id_prompt_and_echo(client, local_backend):
    ids = local_backend.tokenizer(MODEL).encode("The quick brown")
    a = client.completions.create(model=MODEL, prompt=ids, max_tokens=8, temperature=0)
    b = client.completions.create(model=MODEL, prompt="The quick brown", max_tokens=8, temperature=0)
    assert a.choices[0].text == b.choices[0].text
    e = client.completions.create(model=MODEL, prompt="The quick brown", max_tokens=8, temperature=0, echo=True)
    assert e.choices[0].text == "The quick brown" + b.choices[0].text
