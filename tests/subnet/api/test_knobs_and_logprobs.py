"""Sampling knobs (top_k, min_p, repetition_penalty, logit_bias) and logprobs through the live API,
checked against the local transformers model."""

from __future__ import annotations

import openai
import pytest
import torch
from api_support import MODEL

from subnet.api.logprobs import TokenText

CHAT = [{"role": "user", "content": "Tell me a story about a cat."}]
PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def client(api_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=api_url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _chat_prompt(backend) -> list[int]:
    tok = backend.tokenizer(MODEL)
    return tok.encode(tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False),
                      add_special_tokens=False)


def _greedy(backend, prompt_ids: list[int], n: int, **kw) -> list[int]:
    out = backend.model.generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False, **kw)
    ids = out[0, len(prompt_ids):].tolist()
    eos = backend.tokenizer(MODEL).eos_token_id
    return ids[: ids.index(eos)] if eos in ids else ids


def _reference_logprobs(backend, prompt_ids: list[int], gen: list[int]) -> torch.Tensor:
    """log_softmax of the model's logits at each generated position: `[len(gen), vocab]`."""
    with torch.inference_mode():
        logits = backend.model(torch.tensor([prompt_ids + gen])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)[len(prompt_ids) - 1: len(prompt_ids) - 1 + len(gen)]


def _check_rows(ref: torch.Tensor, gen: list[int], chosen: list[float], tops: list[list[float]], k: int):
    assert len(chosen) == len(gen)
    for row, (tok, lp, top) in enumerate(zip(gen, chosen, tops, strict=True)):
        assert abs(lp - ref[row, tok].item()) < 1e-4
        expected = ref[row].topk(k).values.tolist()
        assert len(top) == k
        assert max(abs(a - b) for a, b in zip(sorted(top, reverse=True), expected, strict=True)) < 1e-4


def test_top_k_one_equals_greedy(client):
    greedy = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=16, temperature=0)
    for seed in (1, 2):
        r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=16, temperature=1.5, seed=seed,
                                           extra_body={"top_k": 1})
        assert r.choices[0].message.content == greedy.choices[0].message.content
        m = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=16, temperature=1.5, seed=seed,
                                           extra_body={"min_p": 1.0})
        assert m.choices[0].message.content == greedy.choices[0].message.content


def test_sampling_knobs_change_sampled_output(client):
    kw = dict(model=MODEL, prompt=PROMPT, max_tokens=16, temperature=1.0, seed=7)
    plain = client.completions.create(**kw).choices[0].text
    assert client.completions.create(**kw).choices[0].text == plain  # seeded: reproducible
    assert client.completions.create(**kw, extra_body={"top_k": 2}).choices[0].text != plain


def test_repetition_penalty_matches_transformers(client, local_backend):
    r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=20, temperature=0,
                                       extra_body={"repetition_penalty": 1.5})
    expected = _greedy(local_backend, _chat_prompt(local_backend), 20, repetition_penalty=1.5)
    tok = local_backend.tokenizer(MODEL)
    assert r.choices[0].message.content == tok.decode(expected, skip_special_tokens=True)


def test_logit_bias_bans_and_forces(client, local_backend):
    tok = local_backend.tokenizer(MODEL)
    prompt = tok.encode(PROMPT, add_special_tokens=True)
    first = _greedy(local_backend, prompt, 1)[0]
    text_of = TokenText(tok)
    banned = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=1, temperature=0, logprobs=1,
                                       logit_bias={str(first): -100})
    assert banned.choices[0].logprobs.tokens[0] != text_of(first)[0]
    forced_id = tok.encode("cat", add_special_tokens=False)[-1]
    for stream in (False, True):
        r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=1.0, seed=3, logprobs=0,
                                      logit_bias={str(forced_id): 100}, stream=stream)
        tokens = (sum((c.choices[0].logprobs.tokens for c in r if c.choices and c.choices[0].logprobs), [])
                  if stream else r.choices[0].logprobs.tokens)
        assert tokens == [text_of(forced_id)[0]] * 5


@pytest.mark.parametrize("stream", [False, True])
def test_chat_logprobs_match_transformers(client, local_backend, stream):
    k = 5
    r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=12, temperature=0, logprobs=True,
                                       top_logprobs=k, stream=stream)
    if stream:
        content = [e for c in r if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    else:
        content = r.choices[0].logprobs.content
    prompt = _chat_prompt(local_backend)
    gen = _greedy(local_backend, prompt, 12)
    text_of = TokenText(local_backend.tokenizer(MODEL))
    assert [e.token for e in content] == [text_of(t)[0] for t in gen]
    assert [e.bytes for e in content] == [text_of(t)[1] for t in gen]
    for e in content:
        assert all(0 <= b < 256 for b in e.bytes)
        assert all(isinstance(t.token, str) for t in e.top_logprobs)
    _check_rows(_reference_logprobs(local_backend, prompt, gen), gen, [e.logprob for e in content],
                [[t.logprob for t in e.top_logprobs] for e in content], k)


@pytest.mark.parametrize("stream", [False, True])
def test_completion_logprobs_match_transformers(client, local_backend, stream):
    k = 3
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=10, temperature=0, logprobs=k,
                                  stream=stream)
    if stream:
        parts = [c.choices[0].logprobs for c in r if c.choices and c.choices[0].logprobs]
        lp = {f: sum((getattr(p, f) for p in parts), []) for f in ("tokens", "token_logprobs", "top_logprobs",
                                                                       "text_offset")}
    else:
        lp = r.choices[0].logprobs.model_dump()
    tok = local_backend.tokenizer(MODEL)
    prompt = tok.encode(PROMPT, add_special_tokens=True)
    gen = _greedy(local_backend, prompt, 10)
    text_of = TokenText(tok)
    assert lp["tokens"] == [text_of(t)[0] for t in gen]
    offsets = lp["text_offset"]
    assert offsets[0] == 0 and offsets == sorted(offsets)
    assert offsets[-1] < len(tok.decode(gen, skip_special_tokens=True)) + 1
    tops = [list(d.values()) for d in lp["top_logprobs"]]
    ref = _reference_logprobs(local_backend, prompt, gen)
    # a dict keyed by token text may merge alternatives that decode alike: compare the chosen ones
    for row, top in enumerate(tops):
        assert top and all(any(abs(v - x) < 1e-4 for x in ref[row].topk(k).values.tolist()) for v in top)
    _check_rows(ref, gen, lp["token_logprobs"], [ref[i].topk(k).values.tolist() for i in range(len(gen))], k)


def test_sampled_logprobs_are_of_the_processed_distribution(client):
    r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=6, temperature=0.8, seed=1,
                                       logprobs=True, top_logprobs=3, extra_body={"top_k": 2})
    for e in r.choices[0].logprobs.content:
        top = [t.logprob for t in e.top_logprobs]
        assert abs(sum(torch.tensor(top[:2]).exp().tolist()) - 1) < 1e-4  # top-k=2: all the mass in two tokens
        assert top[2] == -9999.0  # masked (-inf), reported as vLLM does
        assert e.logprob in top[:2]


@pytest.mark.parametrize("kind,extra", [
    ("chat", {"top_k": -2}), ("chat", {"top_k": 1.5}), ("chat", {"min_p": 1.5}), ("chat", {"min_p": -0.1}),
    ("chat", {"repetition_penalty": 0}), ("chat", {"repetition_penalty": 2.5}),
    ("chat", {"logit_bias": {"abc": 1}}), ("chat", {"logit_bias": {"5": 200}}),
    ("chat", {"logit_bias": {"99999999": 1}}), ("chat", {"logprobs": True, "top_logprobs": 21}),
    ("chat", {"top_logprobs": 3}), ("completion", {"logprobs": 6}), ("completion", {"logprobs": -1}),
    ("completion", {"top_k": -5}), ("completion", {"logit_bias": {"1": -101}}),
])
def test_bad_values_are_400_naming_the_field(client, kind, extra):
    if kind == "chat":
        call = lambda: client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2,  # noqa: E731
                                                      extra_body=extra)
    else:
        call = lambda: client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2,  # noqa: E731
                                                 extra_body=extra)
    with pytest.raises(openai.BadRequestError) as e:
        call()
    param = e.value.body["param"]
    assert param in extra, (param, extra)
    assert client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=1).choices  # still serving
