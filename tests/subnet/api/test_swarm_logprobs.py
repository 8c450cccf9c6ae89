"""Knobs and logprobs through the swarm backend: the client's `astream` carries logprobs per event."""

from __future__ import annotations

import openai
import pytest
import torch
from test_swarm_api import swarm_api  # noqa: F401  (the module-scoped live swarm fixture)

pytestmark = pytest.mark.slow
PROMPT = "The quick brown"


def test_swarm_logprobs_and_knobs_match_local_transformers(swarm_api, tiny_llama):  # noqa: F811
    from transformers import AutoModelForCausalLM

    client = openai.OpenAI(base_url=swarm_api.url + "/v1", api_key="x", max_retries=0, timeout=120)
    tok = swarm_api.backend.tokenizer("swarm-llama")
    ids = tok.encode(PROMPT)
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    gen = hf.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids):].tolist()
    if tok.eos_token_id in gen:
        gen = gen[: gen.index(tok.eos_token_id)]
    with torch.inference_mode():
        ref = torch.log_softmax(hf(torch.tensor([ids + gen])).logits[0].float(), -1)[len(ids) - 1:-1]
    for stream in (False, True):
        r = client.completions.create(model="swarm-llama", prompt=PROMPT, max_tokens=8, temperature=0, logprobs=2,
                                      stream=stream)
        if stream:
            got = [x for c in r if c.choices and c.choices[0].logprobs for x in c.choices[0].logprobs.token_logprobs]
        else:
            got = r.choices[0].logprobs.token_logprobs
        expected = [ref[i, t].item() for i, t in enumerate(gen)]
        assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) < 1e-4
    chat = [{"role": "user", "content": "Hi"}]
    greedy = client.chat.completions.create(model="swarm-llama", messages=chat, max_tokens=8, temperature=0)
    top1 = client.chat.completions.create(model="swarm-llama", messages=chat, max_tokens=8, temperature=1.3, seed=2,
                                          logprobs=True, top_logprobs=1, extra_body={"top_k": 1})
    assert top1.choices[0].message.content == greedy.choices[0].message.content
    assert all(e.logprob == 0.0 for e in top1.choices[0].logprobs.content)  # top-k=1: probability one
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="swarm-llama", messages=chat, extra_body={"min_p": 2})
    assert e.value.body["param"] == "min_p"
