"""Prefix reuse and n > 1 through the API over a live swarm (hoster processes), with the official
openai client: the next chat turn and another user's request with the same system prompt fork the
KV the hosters kept, so the hosters compute only the new positions (their counters say how many)
and greedy tokens equal local transformers'; n choices prefill their prompt once."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from test_swarm_api import swarm_api  # noqa: F401  (the module-scoped live swarm fixture)

pytestmark = pytest.mark.slow
SYSTEM = ("You are a terse assistant for a distributed inference network. Answer in short sentences, "
          "never use lists, and say when you do not know something about blocks, hosters or routes.")


def counter(url: str, name: str) -> float:
    for fam in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for s in fam.samples:
            if s.name == name:
                return s.value
    return 0.0


def counters(api, name: str) -> list[float]:
    return [counter(u, name) for u in api.metrics]


def wait_stored(api, before: list[float], timeout: float = 60.0) -> None:
    """The hosters keep a closed session's KV a moment after the response (the stream closes first)."""
    deadline = time.monotonic() + timeout
    while any(a <= b for a, b in zip(counters(api, "mesh_hoster_prefix_stored_total"), before)):
        assert time.monotonic() < deadline, "the hosters did not keep the closed session"
        time.sleep(0.1)


def greedy_reference(tiny_llama, ids: list[int], n: int) -> list[int]:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    out = hf.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)[0, len(ids):].tolist()
    eos = hf.generation_config.eos_token_id
    for e in eos if isinstance(eos, list) else [eos]:
        if e in out:
            out = out[:out.index(e)]
    return out


def chat_ids(api, messages) -> list[int]:
    return api.backend._models["swarm-llama"].chat_prompt_ids(messages)


def test_next_chat_turn_computes_only_new_tokens_with_the_same_greedy_tokens(swarm_api, tiny_llama):  # noqa: F811
    client = openai.OpenAI(base_url=swarm_api.url + "/v1", api_key="x", max_retries=0, timeout=300)
    turn1 = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is a hoster?"}]
    kw = dict(model="swarm-llama", max_tokens=8, temperature=0)
    stored = counters(swarm_api, "mesh_hoster_prefix_stored_total")
    first = client.chat.completions.create(messages=turn1, **kw)
    wait_stored(swarm_api, stored)
    turn2 = turn1 + [{"role": "assistant", "content": first.choices[0].message.content},
                     {"role": "user", "content": "And a route?"}]
    ids = chat_ids(swarm_api, turn2)
    computed = counters(swarm_api, "mesh_hoster_positions_computed_total")
    hits = counters(swarm_api, "mesh_hoster_prefix_hits_total")
    second = client.chat.completions.create(messages=turn2, **kw)
    new = [a - b for a, b in zip(counters(swarm_api, "mesh_hoster_positions_computed_total"), computed)]
    assert all(a > b for a, b in zip(counters(swarm_api, "mesh_hoster_prefix_hits_total"), hits))
    # each hoster computed the prompt's new tail and one position per generated token, not the history
    assert all(c <= len(ids) - 32 + 8 for c in new), (new, len(ids))
    tok = swarm_api.backend.tokenizer("swarm-llama")
    expected = tok.decode(greedy_reference(tiny_llama, ids, 8), skip_special_tokens=True)
    assert second.choices[0].message.content == expected


def test_shared_system_prompt_hits_for_another_user(swarm_api):  # noqa: F811
    client = openai.OpenAI(base_url=swarm_api.url + "/v1", api_key="x", max_retries=0, timeout=300)
    system = SYSTEM + " Always greet the user by name first."
    kw = dict(model="swarm-llama", max_tokens=4, temperature=0)
    stored = counters(swarm_api, "mesh_hoster_prefix_stored_total")
    client.chat.completions.create(messages=[{"role": "system", "content": system},
                                             {"role": "user", "content": "I am Ada. Hello."}], user="ada", **kw)
    wait_stored(swarm_api, stored)
    hits = counters(swarm_api, "mesh_hoster_prefix_hits_total")
    reused = counters(swarm_api, "mesh_hoster_prefix_reused_positions_total")
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": "Bob here: what is a block?"}]
    client.chat.completions.create(messages=msgs, user="bob", **kw)
    assert all(a > b for a, b in zip(counters(swarm_api, "mesh_hoster_prefix_hits_total"), hits))
    shared = [a - b for a, b in zip(counters(swarm_api, "mesh_hoster_prefix_reused_positions_total"), reused)]
    assert all(s >= 32 for s in shared)


def test_n_choices_prefill_the_prompt_once(swarm_api):  # noqa: F811
    client = openai.OpenAI(base_url=swarm_api.url + "/v1", api_key="x", max_retries=0, timeout=300)
    prompt = "Count the hosters that serve the first blocks of the model, one by one, slowly:"
    ids = swarm_api.backend.tokenizer("swarm-llama").encode(prompt)
    computed = counters(swarm_api, "mesh_hoster_positions_computed_total")
    r = client.completions.create(model="swarm-llama", prompt=prompt, n=4, max_tokens=6, temperature=1.0, seed=5)
    assert len(r.choices) == 4
    new = [a - b for a, b in zip(counters(swarm_api, "mesh_hoster_positions_computed_total"), computed)]
    # the prompt once, then one position per choice per further token (4 separate prefills: 4 x len(ids))
    assert all(len(ids) <= c <= len(ids) + 4 * 5 for c in new), (new, len(ids))
    assert len(ids) + 4 * 5 < 4 * len(ids)


def test_a_forked_session_has_valid_receipts_and_the_same_outputs(swarm_api):  # noqa: F811
    model = swarm_api.backend._models["swarm-llama"]
    ids = torch.randint(3, 200, (80,), generator=torch.Generator().manual_seed(9)).tolist()
    stored = counters(swarm_api, "mesh_hoster_prefix_stored_total")
    model.complete(ids, max_new_tokens=3, do_sample=False)  # remembered by the client, kept by the hosters
    wait_stored(swarm_api, stored)
    prompt = ids[:70] + [5, 6, 7, 8]
    with model.inference_session(100, 1, prefix_tokens=prompt) as s:
        assert s.position == 64  # the longest 32-position boundary under the 70 shared tokens
        out = s.step(model.head.embed_ids(torch.tensor([prompt[64:]])))
        assert s.session.verifier is not None  # the default client checks receipts
        # each hoster's signed receipt covers [0, 74): it continues the chain of the forked prefix
        assert all(st.check.receipt_ok and st.check.receipt is not None and st.check.receipt.position == 64
                   and st.check.receipt.length == 10 for st in s.session.spans)
        assert all(st.history.shape[1] >= 74 for st in s.session.spans)  # failover can replay the whole prefix
    with model.inference_session(100, 1) as fresh:  # no prefix: everything sent
        ref = fresh.step(model.head.embed_ids(torch.tensor([prompt])))
    torch.testing.assert_close(out, ref[:, 64:], rtol=1e-4, atol=1e-4)
