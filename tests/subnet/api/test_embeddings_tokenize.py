"""/v1/embeddings (official openai client) and vLLM's /tokenize and /detokenize (local backend)."""

from __future__ import annotations

import httpx
import openai
import pytest
import torch
from api_support import MODEL, live_server


@pytest.fixture(scope="module")
def url(local_backend):
    from subnet.api import create_app

    app = create_app(local_backend, max_concurrent_streams=4, max_prompt_tokens=512, max_tokens_limit=100)
    with live_server(app) as u:
        yield u


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _reference(local_backend, ids: list[int]) -> torch.Tensor:
    """Mean of transformers' final-normed last hidden state, L2-normalised (the documented definition)."""
    with torch.inference_mode():
        h = local_backend.model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
    return torch.nn.functional.normalize(h.float().mean(0), dim=-1)


def test_embeddings_single_batch_and_token_ids(client, local_backend):
    tok = local_backend.tokenizer(MODEL)
    texts = ["The quick brown fox", "Hello", "Validators post probes and hosters reveal."]
    batch = client.embeddings.create(model=MODEL, input=texts)  # the SDK asks for base64 and decodes it
    assert [d.index for d in batch.data] == [0, 1, 2]
    assert batch.usage.prompt_tokens == sum(len(tok.encode(t)) for t in texts)
    hidden = local_backend.model.config.hidden_size
    for text, d in zip(texts, batch.data, strict=True):
        v = torch.tensor(d.embedding)
        assert v.shape == (hidden,) and abs(float(v.norm()) - 1.0) < 1e-4
        assert torch.allclose(v, _reference(local_backend, tok.encode(text)), atol=1e-4)
    single = client.embeddings.create(model=MODEL, input=texts[1])
    assert torch.allclose(torch.tensor(single.data[0].embedding), torch.tensor(batch.data[1].embedding), atol=1e-5)
    ids = tok.encode(texts[0])
    by_ids = client.embeddings.create(model=MODEL, input=ids)
    assert torch.allclose(torch.tensor(by_ids.data[0].embedding), torch.tensor(batch.data[0].embedding), atol=1e-5)
    many = client.embeddings.create(model=MODEL, input=[ids, tok.encode(texts[2])])
    assert len(many.data) == 2 and by_ids.usage.prompt_tokens == len(ids)


def test_embeddings_float_format(url):
    r = httpx.post(url + "/v1/embeddings", json={"model": MODEL, "input": "Hello", "encoding_format": "float"})
    assert r.status_code == 200 and isinstance(r.json()["data"][0]["embedding"][0], float)
    assert r.json()["object"] == "list" and r.json()["data"][0]["object"] == "embedding"


@pytest.mark.parametrize("body,param", [
    ({"input": "Hello", "dimensions": 8}, "dimensions"),
    ({"input": ""}, "input"),
    ({"input": ["ok", ""]}, "input"),
    ({"input": []}, "input"),
    ({"input": [[]]}, "input"),
    ({"input": [10 ** 9]}, "input"),
    ({"input": "Hello", "encoding_format": "int8"}, "encoding_format"),
    ({"input": "Hello", "colour": 1}, "colour"),
    ({"input": "hello " * 2000}, "input"),
])
def test_bad_embedding_requests_are_400s_and_the_server_keeps_serving(url, body, param):
    r = httpx.post(url + "/v1/embeddings", json={"model": MODEL, **body})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert httpx.post(url + "/v1/embeddings", json={"model": MODEL, "input": "ok"}).status_code == 200


def test_tokenize_detokenize_round_trip(url, client, local_backend):
    tok = local_backend.tokenizer(MODEL)
    r = httpx.post(url + "/tokenize", json={"model": MODEL, "prompt": "Hello world", "return_token_strs": True})
    body = r.json()
    assert r.status_code == 200 and body["tokens"] == tok.encode("Hello world") and body["count"] == len(body["tokens"])
    assert body["token_strs"] == tok.convert_ids_to_tokens(body["tokens"]) and body["max_model_len"] == 65536
    back = httpx.post(url + "/detokenize", json={"tokens": body["tokens"]}).json()  # model may be left out
    assert back == {"prompt": tok.decode(body["tokens"])}
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    chat = httpx.post(url + "/tokenize", json={"model": MODEL, "messages": messages}).json()
    usage = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1).usage
    assert chat["count"] == usage.prompt_tokens and chat["token_strs"] is None
    no_prompt = httpx.post(url + "/tokenize", json={"messages": messages, "add_generation_prompt": False}).json()
    assert no_prompt["count"] < chat["count"]


@pytest.mark.parametrize("path,body,param", [
    ("/tokenize", {"prompt": "x", "messages": [{"role": "user", "content": "x"}]}, "prompt"),
    ("/tokenize", {}, "prompt"),
    ("/tokenize", {"prompt": "x", "colour": 1}, "colour"),
    ("/tokenize", {"model": "nope", "prompt": "x"}, "model"),
    ("/detokenize", {"tokens": [-1]}, "tokens"),
    ("/detokenize", {"tokens": "abc"}, "tokens"),
])
def test_bad_tokenize_requests_are_400s(url, path, body, param):
    r = httpx.post(url + path, json=body)
    assert r.status_code in (400, 404) and r.json()["error"]["param"] == param, r.text


def test_every_documented_embedding_field_is_honoured_or_refused(url):
    """The SDK's embedding fields are all handled: each honoured, `dimensions` refused naming it."""
    import typing

    from openai.types import embedding_create_params

    documented = set(typing.get_type_hints(embedding_create_params.EmbeddingCreateParams))
    honoured = {"model": MODEL, "input": ["a", "b"], "encoding_format": "float", "user": "someone"}
    assert documented == set(honoured) | {"dimensions"}
    r = httpx.post(url + "/v1/embeddings", json=honoured)
    assert r.status_code == 200 and len(r.json()["data"]) == 2
    r = httpx.post(url + "/v1/embeddings", json={**honoured, "dimensions": 16})
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions"
    assert r.json()["error"]["code"] == "unsupported_parameter"


def test_embedding_request_total_tokens_are_bounded(url, client, local_backend):
    tok = local_backend.tokenizer(MODEL)
    ids = (tok.encode("hello world ") * 500)[:500]  # under the 512-token prompt limit
    r = httpx.post(url + "/v1/embeddings", json={"model": MODEL, "input": [ids] * 9})  # 4500 > 8 x 512
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    many = client.embeddings.create(model=MODEL, input=["Hello"] * 20)  # more rows than one session takes
    first = torch.tensor(many.data[0].embedding)
    assert len(many.data) == 20 and all(torch.allclose(torch.tensor(d.embedding), first, atol=1e-5) for d in many.data)
