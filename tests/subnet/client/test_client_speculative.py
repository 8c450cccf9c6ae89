"""Speculative decoding through a chain of 3 real hoster processes (push forwarding, receipts, checks).

Two hosters per span ([0:3), [3:6), [6:8)): every route is a 3-hoster chain and every span has
another route to be checked on, so blocking checks of every step verify the speculative steps
(k+1 positions, rollbacks of rejected drafts) against independent recomputation.
"""

from __future__ import annotations

import pytest
import torch

from subnet.client import DistributedModelForCausalLM
from subnet.client.sampling import SamplingParams
from subnet.client.speculative import DraftController
from subnet.client.speculative_loop import speculative_events

pytestmark = pytest.mark.slow

SPANS = [(0, 3), (3, 6), (6, 8)]
CODE = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n\n\n"


class Garbage:
    """Drafts that are (almost) always wrong: every speculative step rolls the hosters back."""

    def draft(self, tokens, k):
        return [(tokens[-1] * 7 + 3 + i) % 50 for i in range(k)]


@pytest.fixture(scope="module")
def spec_swarm(swarm_factory, tiny_model_factory):
    from transformers import AutoModelForCausalLM

    path = tiny_model_factory("llama")
    swarm = swarm_factory()
    swarm.start_hosters_async(path, SPANS + SPANS, "--model-name", "spec")
    swarm.wait_all()
    model = DistributedModelForCausalLM.from_pretrained(
        path, initial_peers=swarm.initial_peers, model_name="spec", request_timeout=30.0,
        verify_fraction=1.0, verify_background=False,  # every span of every step checked elsewhere, blocking
    )
    try:
        assert len(model.wait_until_servable(60)) == 3
        reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        yield model, reference
    finally:
        model.close()


def _drive(model, ids, params, drafter=None, controller=None):
    """Generate with `speculative_events` over one session; returns tokens, the session and rollbacks."""
    rollbacks = []
    with model.inference_session(ids.shape[1] + params.max_new_tokens, ids.shape[0]) as rs:
        def step(hidden, position):
            if position < rs.position:
                rollbacks.append((rs.position, position))
            return rs.step(hidden, position)

        tokens = [[] for _ in range(ids.shape[0])]
        for events in speculative_events(model.head, step, ids, params, drafter=drafter, controller=controller):
            for ev in events:
                tokens[ev.index].append(ev.token_id)
        return tokens, rs.session, rollbacks


def test_greedy_speculative_equals_transformers_across_three_hosters(spec_swarm):
    model, reference = spec_swarm
    ids = model.tokenizer(CODE * 3, return_tensors="pt")["input_ids"]
    expected = reference.generate(ids, max_new_tokens=40, do_sample=False)
    assert model.generate(ids, max_new_tokens=40).tolist() == expected.tolist()  # speculation on by default
    assert model.generate(ids, max_new_tokens=40, speculative=False).tolist() == expected.tolist()
    controller = DraftController(6)
    tokens, session, _ = _drive(model, ids, SamplingParams(max_new_tokens=40), controller=controller)
    assert tokens[0] == expected[0, ids.shape[1]:].tolist()
    assert controller.accepted > 0 and controller.tokens_per_round > 1.0
    assert len(session.route) == 3 and session.pushed_steps > 0
    assert session.verifier.checked > 0 and session.verifier.mismatches == 0 and session.redone_steps == 0


def test_rejected_drafts_roll_the_chain_back_and_tokens_still_match(spec_swarm):
    model, reference = spec_swarm
    ids = model.tokenizer(CODE, return_tensors="pt")["input_ids"]
    expected = reference.generate(ids, max_new_tokens=16, do_sample=False)[0, ids.shape[1]:].tolist()
    controller = DraftController(3, probe_every=1)
    tokens, session, rollbacks = _drive(model, ids, SamplingParams(max_new_tokens=16), drafter=Garbage(),
                                        controller=controller)
    assert tokens[0] == expected
    assert rollbacks and controller.drafted > controller.accepted
    assert session.pushed_steps > 0 and not session.push_off  # rollback steps are pushed too
    assert session.verifier.mismatches == 0 and session.redone_steps == 0  # receipts cut at the rollback


def test_batched_rows_and_streaming(spec_swarm):
    model, reference = spec_swarm
    tok = model.tokenizer
    a = tok(CODE * 2, return_tensors="pt")["input_ids"]
    b = tok("x = [1, 2, 3]\ny = [1, 2, 3]\nz = [1, 2, 3]\n" * 2, return_tensors="pt")["input_ids"]
    n = min(a.shape[1], b.shape[1])
    batch = torch.cat([a[:, :n], b[:, :n]])
    expected = reference.generate(batch, max_new_tokens=20, do_sample=False)
    assert model.generate(batch, max_new_tokens=20, speculative=4).tolist() == expected.tolist()
    events = list(model.stream(a, max_new_tokens=24))
    assert [e.token_id for e in events] == reference.generate(a, max_new_tokens=24, do_sample=False)[
        0, a.shape[1]:].tolist()
    assert all(e.finish_reason is None for e in events[:-1]) and events[-1].finish_reason == "length"
