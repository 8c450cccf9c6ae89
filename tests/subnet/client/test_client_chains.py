"""Greedy generation through chains of 1 and 3 real hoster processes equals local transformers.

One module-scoped swarm per architecture: the same checkpoint is served under two model
names, by one hoster [0:8) and by three [0:3)+[3:6)+[6:8) (a first, a middle and a last hoster;
two-hoster chains: tests/subnet/client/test_client_architectures.py).
"""

from __future__ import annotations

import time

import pytest
import torch

from subnet.client import DistributedModelForCausalLM, RouteError, SessionError

pytestmark = [pytest.mark.slow, pytest.mark.long]

CHAINS = {1: [(0, 8)], 3: [(0, 3), (3, 6), (6, 8)]}
PROMPTS = [
    "The quick brown fox",
    "Hello world! How are you today?",
    "Unicode: café, naïve, 日本語, emoji 🙂",
]


def long_prompt(tokenizer) -> str:
    text = " ".join(["Decentralized inference splits a transformer into blocks served by many hosters."] * 30)
    assert len(tokenizer(text)["input_ids"]) > 200
    return text


@pytest.fixture(scope="module")
def chain_swarms(swarm_factory, tiny_model_factory):
    """`get(arch)` -> (arch, path, models, swarm), built on first use and kept until the module ends.

    A shuffled order alternates the two architectures' tests; keeping both swarms alive means a
    switch costs nothing instead of tearing down and restarting five hoster processes.
    """
    built: dict[str, tuple] = {}
    opened: list = []

    def get(arch: str) -> tuple:
        if arch not in built:
            path = tiny_model_factory(arch)
            swarm = swarm_factory()
            for n, spans in CHAINS.items():
                swarm.start_hosters_async(path, spans, "--model-name", f"{arch}-chain{n}")
            swarm.start_hosters_async(path, [(0, 5)], "--model-name", f"{arch}-gap")
            swarm.wait_all()
            models = {}
            for n in CHAINS:
                model = DistributedModelForCausalLM.from_pretrained(
                    path, initial_peers=swarm.initial_peers, model_name=f"{arch}-chain{n}",
                    request_timeout=20.0,
                )
                opened.append(model)
                models[n] = model
                route = model.wait_until_servable(60)
                assert len(route) == n, route
            built[arch] = (arch, path, models, swarm)
        return built[arch]

    try:
        yield get
    finally:
        for m in opened:
            m.close()
        # swarm_factory shuts the swarms down after the module


@pytest.fixture(params=["llama", "qwen3"])
def chain_swarm(request, chain_swarms):
    return chain_swarms(request.param)


@pytest.fixture(scope="module")
def references():
    """Local transformers models by checkpoint path, loaded once per module."""
    return {}


@pytest.fixture
def reference(chain_swarm, references):
    from transformers import AutoModelForCausalLM

    _, path, _, _ = chain_swarm
    if path not in references:
        references[path] = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return references[path]


@pytest.mark.parametrize("n_hosters", [1, 3])
def test_greedy_equals_transformers(chain_swarm, reference, n_hosters):
    _, _, models, _ = chain_swarm
    model = models[n_hosters]
    tok = model.tokenizer
    for prompt in PROMPTS + [long_prompt(tok)]:
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        expected = reference.generate(ids, max_new_tokens=24, do_sample=False)
        got = model.generate(ids, max_new_tokens=24)
        assert got.shape == expected.shape
        assert got.tolist() == expected.tolist(), prompt[:40]
        assert model.active_routes() == []  # the session was closed


def test_batch_and_padding(chain_swarm, reference):
    _, _, models, _ = chain_swarm
    model = models[3]
    tok = model.tokenizer
    a = tok("The quick brown fox", return_tensors="pt")["input_ids"]
    b = tok("Hello world! How are", return_tensors="pt")["input_ids"]
    n = min(a.shape[1], b.shape[1])
    batch = torch.cat([a[:, :n], b[:, :n]])
    expected = reference.generate(batch, max_new_tokens=12, do_sample=False)
    assert model.generate(batch, max_new_tokens=12).tolist() == expected.tolist()
    # a left-padded batch gives each row what it gets alone
    long, short = a, b[:, : max(1, n - 2)]
    width = max(long.shape[1], short.shape[1])
    pad = model.pad_token_id()
    ids = torch.full((2, width), pad)
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, row in enumerate([long, short]):
        ids[i, width - row.shape[1]:] = row[0]
        mask[i, width - row.shape[1]:] = 1
    out = model.generate(ids, attention_mask=mask, max_new_tokens=8)
    for i, row in enumerate([long, short]):
        alone = model.generate(row, max_new_tokens=8)[0, row.shape[1]:]
        assert out[i, width: width + len(alone)].tolist() == alone.tolist()


def test_stream_text_matches_decode(chain_swarm, reference):
    _, _, models, _ = chain_swarm
    model = models[3]
    tok = model.tokenizer
    ids = tok(PROMPTS[2], return_tensors="pt")["input_ids"]
    expected = reference.generate(ids, max_new_tokens=30, do_sample=False)[0, ids.shape[1]:].tolist()
    events = list(model.stream(ids, max_new_tokens=30))
    assert [e.token_id for e in events] == expected
    assert all(e.finish_reason is None for e in events[:-1])
    assert events[-1].finish_reason in ("stop", "length")
    text = "".join(e.text for e in events)
    assert text == tok.decode(expected, skip_special_tokens=True)


async def test_astream_matches_stream(chain_swarm):
    _, _, models, _ = chain_swarm
    model = models[3]
    sync = [(e.token_id, e.text) for e in model.stream(PROMPTS[0], max_new_tokens=10)]
    got = [(e.token_id, e.text) async for e in model.astream(PROMPTS[0], max_new_tokens=10)]
    assert got == sync


def test_seeded_sampling_is_reproducible(chain_swarm):
    _, _, models, _ = chain_swarm
    model = models[3]
    ids = model.tokenizer(PROMPTS[1], return_tensors="pt")["input_ids"]
    kw = dict(max_new_tokens=20, do_sample=True, temperature=1.3, top_p=0.95, top_k=100)
    first = model.generate(ids, seed=1234, **kw)
    again = model.generate(ids, seed=1234, **kw)
    other = model.generate(ids, seed=4321, **kw)
    greedy = model.generate(ids, max_new_tokens=20)
    assert first.tolist() == again.tolist()
    assert first.tolist() != other.tolist()
    assert first.tolist() != greedy.tolist()
    # the same through the streaming path with SamplingParams
    params = model.sampling_params(ids.shape[1], seed=1234, **kw)
    streamed = [e.token_id for e in model.stream_completion(ids[0].tolist(), params)]
    assert streamed == first[0, ids.shape[1]:].tolist()[: len(streamed)]


def test_stop_sequences(chain_swarm):
    _, _, models, _ = chain_swarm
    model = models[3]
    tok = model.tokenizer
    ids = tok(PROMPTS[0], return_tensors="pt")["input_ids"][0].tolist()
    full = model.complete(ids, max_new_tokens=30, ignore_eos=True)
    assert full.finish_reason == "length" and full.completion_tokens == 30
    # a stop string: pick text from the middle of the uninterrupted output
    text = full.text
    assert len(text) > 6
    # (random weights: take two whole characters, not U+FFFD from invalid bytes)
    starts = [i for i in range(1, len(text) - 1) if "\ufffd" not in text[i:i + 2]]
    assert starts
    stop = text[starts[len(starts) // 2]: starts[len(starts) // 2] + 2]
    cut = text.find(stop)
    res = model.complete(ids, max_new_tokens=30, ignore_eos=True, stop=[stop, "\x00never"])
    assert res.finish_reason == "stop"
    assert res.text == text[:cut]
    assert res.token_ids == full.token_ids[: len(res.token_ids)]
    assert stop in tok.decode(res.token_ids) and stop not in tok.decode(res.token_ids[:-1])
    # streamed deltas never show the stop string
    streamed = "".join(e.text for e in model.stream(ids, max_new_tokens=30, ignore_eos=True, stop=stop))
    assert streamed == text[:cut]
    # a stop token id ends at its first occurrence, the token is included
    k = 7
    stop_id = full.token_ids[k]
    first = full.token_ids.index(stop_id)
    res = model.complete(ids, max_new_tokens=30, ignore_eos=True, stop=[stop_id])
    assert res.finish_reason == "stop" and res.token_ids == full.token_ids[: first + 1]
    out = model.generate(torch.tensor([ids]), max_new_tokens=30, stop=[stop_id])
    assert out[0, len(ids):].tolist() == full.token_ids[: first + 1]
    # max_new_tokens -> "length"
    assert model.complete(ids, max_new_tokens=3, ignore_eos=True).finish_reason == "length"


def test_chat_uses_template(chain_swarm):
    _, _, models, _ = chain_swarm
    model = models[1]
    messages = [{"role": "user", "content": "Hello world!"}]
    prompt_ids = model.chat_prompt_ids(messages)
    rendered = model.tokenizer.decode(prompt_ids)
    assert rendered.startswith("<|user|>\nHello world!<|end|>") and rendered.endswith("<|assistant|>\n")
    reply = model.chat(messages, max_new_tokens=12)
    assert reply == model.complete(prompt_ids, max_new_tokens=12).text


def test_uncovered_block_fails_fast(chain_swarm):
    arch, path, _, swarm = chain_swarm
    model = DistributedModelForCausalLM.from_pretrained(
        path, initial_peers=swarm.initial_peers, model_name=f"{arch}-gap")
    try:
        t0 = time.monotonic()
        with pytest.raises(SessionError, match="block 5"):
            model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4)
        with pytest.raises(RouteError, match="block 5"):
            model.wait_until_servable(timeout=1.0)
        assert time.monotonic() - t0 < 20
    finally:
        model.close()
    nobody = DistributedModelForCausalLM.from_pretrained(
        path, initial_peers=swarm.initial_peers, model_name=f"{arch}-nobody-serves-this")
    try:
        with pytest.raises(SessionError, match="block 0"):
            nobody.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4)
    finally:
        nobody.close()


def test_concurrent_sessions(chain_swarm):
    """Several threads and async streams at once (as an API server does) get their own results."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    _, _, models, _ = chain_swarm
    model = models[3]
    tok = model.tokenizer
    prompts = [tok(p, return_tensors="pt")["input_ids"] for p in PROMPTS]
    alone = [model.generate(ids, max_new_tokens=10).tolist() for ids in prompts]
    model.manager.aligner.sizes.clear()
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(lambda ids: model.generate(ids, max_new_tokens=10).tolist(), prompts))
    assert together == alone
    # their decode steps left in rounds of several sessions (subnet.client.send_align)
    assert max(model.manager.aligner.sizes) >= 2, model.manager.aligner.sizes

    async def collect(ids):
        return [e.token_id async for e in model.astream(ids[0].tolist(), max_new_tokens=10, ignore_eos=True)]

    async def main():
        return await asyncio.gather(*(collect(ids) for ids in prompts))

    streamed = asyncio.run(main())
    for ids, got in zip(prompts, streamed):
        assert got == model.generate(ids, max_new_tokens=10, ignore_eos=True)[0, ids.shape[1]:].tolist()
    assert model.active_routes() == []


async def test_abandoned_streams_close_their_sessions(chain_swarm):
    import asyncio

    _, _, models, _ = chain_swarm
    model = models[3]
    it = model.stream(PROMPTS[0], max_new_tokens=50, ignore_eos=True)
    next(it)
    assert len(model.active_routes()) == 1
    it.close()
    assert model.active_routes() == []

    agen = model.astream(PROMPTS[0], max_new_tokens=50, ignore_eos=True)
    async for _ in agen:
        break
    await agen.aclose()
    for _ in range(100):
        if not model.active_routes():
            break
        await asyncio.sleep(0.05)
    assert model.active_routes() == []


@pytest.mark.parametrize("n_hosters", [3])
def test_steps_are_forwarded_hoster_to_hoster(chain_swarm, reference, n_hosters):
    """In the steady state every step goes client -> h1 -> ... -> hk -> client (pushes), with the
    same numbers as hop by hop; turning push off in the config gives the same tokens."""
    import dataclasses

    _, _, models, _ = chain_swarm
    model = models[n_hosters]
    ids = model.tokenizer(PROMPTS[1], return_tensors="pt")["input_ids"]
    expected = reference.generate(ids, max_new_tokens=10, do_sample=False)
    with model.inference_session(max_length=ids.shape[1] + 10) as sess:
        hidden = sess.step(model.head.embed_ids(ids))
        tokens = [int(model.head.logits(hidden).argmax(-1))]
        for _ in range(9):
            hidden = sess.step(model.head.embed_ids(torch.tensor([[tokens[-1]]])))
            tokens.append(int(model.head.logits(hidden).argmax(-1)))
        assert sess.session.pushed_steps == 10 and sess.session.push_fallbacks == 0
        assert all(st.server_pos == ids.shape[1] + 9 for st in sess.session.spans)
        assert all(st.history is not None for st in sess.session.spans)  # replayable after a failure
    assert tokens == expected[0, ids.shape[1]:].tolist()
    config = model.manager.config
    try:
        model.manager.config = dataclasses.replace(config, push=False)
        assert model.generate(ids, max_new_tokens=10).tolist() == expected.tolist()
    finally:
        model.manager.config = config
