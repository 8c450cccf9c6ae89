"""Every newly supported architecture through a 2-hoster chain of real processes equals local transformers.

One module-scoped swarm per architecture (torn down before the next one starts): hosters
[0:4) + [4:8) of a tiny random checkpoint built locally (a middle hoster adds nothing that depends
on the architecture: tests/subnet/client/test_client_chains.py covers 3-hoster chains). Covered per architecture:
greedy decoding with the KV cache over a prompt longer than the sliding windows, two sessions
at once (the hoster batches their steps where the attention allows), and the stateless forward
the probe duty uses (hoster output vs the same layers run locally).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from subnet.client import DistributedModelForCausalLM
from subnet.client.transport import rpc_forward

pytestmark = [pytest.mark.slow, pytest.mark.long]

ARCHS = ["llama3", "gemma2", "gemma3", "phi3", "mixtral", "qwen3_moe"]
SPANS = [(0, 4), (4, 8)]
PROMPTS = ["The quick brown fox", "Hello world! How are you today? I am fine, thank you."]


@pytest.fixture(scope="module", params=ARCHS)
def arch_chain(request, swarm_factory, tiny_model_factory):
    """(arch, path, distributed model, local transformers model, swarm) for one architecture."""
    from transformers import AutoModelForCausalLM

    arch = request.param
    path = tiny_model_factory(arch)
    swarm = swarm_factory()
    try:
        swarm.start_hosters(path, SPANS, "--model-name", f"{arch}-arch")
        model = DistributedModelForCausalLM.from_pretrained(
            path, initial_peers=swarm.initial_peers, model_name=f"{arch}-arch", request_timeout=30.0)
        try:
            assert len(model.wait_until_servable(90)) == len(SPANS)
            reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
            yield arch, path, model, reference, swarm
        finally:
            model.close()
    finally:
        swarm.shutdown()  # free the processes before the next architecture starts


def test_greedy_equals_transformers(arch_chain):
    arch, _, model, reference, _ = arch_chain
    tok = model.tokenizer
    long = " ".join(["Validators post probes, hosters commit and reveal."] * 4)  # > sliding windows (8)
    for prompt in PROMPTS + [long]:
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        expected = reference.generate(ids, max_new_tokens=16, do_sample=False)
        got = model.generate(ids, max_new_tokens=16)
        assert got.tolist() == expected.tolist(), (arch, prompt[:30])


def test_two_sessions_at_once(arch_chain):
    arch, _, model, reference, _ = arch_chain
    tok = model.tokenizer
    prompts = [tok(p, return_tensors="pt")["input_ids"] for p in PROMPTS]
    expected = [reference.generate(ids, max_new_tokens=12, do_sample=False).tolist() for ids in prompts]
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda ids: model.generate(ids, max_new_tokens=12).tolist(), prompts))
    assert got == expected, arch


def test_probe_forward_matches_local_layers(arch_chain):
    """The stateless forward (what a probe runs) equals the same layers of the local model."""
    arch, path, model, reference, swarm = arch_chain
    ids = model.tokenizer(PROMPTS[1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        states = reference(ids, output_hidden_states=True).hidden_states  # [embeddings, after layer 0, ...]
    for hoster in swarm.hosters:
        a, b = hoster.blocks
        got = model.runtime.run(rpc_forward(model.runtime.p2p, hoster.peer_id, f"{arch}-arch", a, b, states[a],
                                            timeout=30.0), timeout=60)
        if b == len(states) - 1:  # transformers' last hidden state is taken after the final norm
            with torch.no_grad():
                got = reference.model.norm(got)
        torch.testing.assert_close(got, states[b], rtol=1e-4, atol=1e-4, msg=f"{arch} [{a}:{b})")


def test_next_turn_reuses_the_prefix_and_equals_transformers(arch_chain):
    """A second turn that extends the first (prompt + answer + more) forks the KV the hosters kept
    (sliding-window and MoE layers included) and still gives local transformers' greedy tokens.
    A hoster adopts a closed session's KV on its compute thread once the close arrives, so a turn
    sent right after may miss (docs/PROTOCOL.md); turns are repeated until one hits, each checked."""
    arch, _, model, reference, _ = arch_chain
    tok = model.tokenizer
    first = tok(" ".join(["Hosters serve blocks and validators score them."] * 4), return_tensors="pt")["input_ids"]
    assert first.shape[1] > 33
    turn1 = model.generate(first, max_new_tokens=8)
    follow = tok(" And what do clients do?", return_tensors="pt", add_special_tokens=False)["input_ids"]
    second = torch.cat([turn1, follow], dim=1)
    expected = reference.generate(second, max_new_tokens=12, do_sample=False).tolist()
    store = model.manager.prefix_store
    deadline = time.monotonic() + 60
    for attempt in range(10):
        before = store.reused_positions
        assert model.generate(second, max_new_tokens=12).tolist() == expected, (arch, attempt)
        if store.reused_positions - before >= 32:
            break
        records = [(len(r.tokens), [(sp.peer_id[-6:], sp.start, sp.end) for sp in r.route])
                   for r in store._records.values()]
        assert time.monotonic() < deadline and attempt < 9, f"{arch}: no turn reused the prefix; records {records}"
