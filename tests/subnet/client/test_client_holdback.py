"""The token loop holds back tokens while checks are pending and regenerates from the last
verified token when one fails (subnet/client/holdback.py): a consumer never sees a wrong token.

A fake session (causal, with a rollback-able cache) and a fake gate (checks that resolve a few
steps later) drive the real `generate_events`, sampler and detokenization-free rows."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from subnet.client.generation import ClientHead, generate_events
from subnet.client.sampling import SamplingParams

VOCAB, HIDDEN = 97, 16


def _head(vocab: int = VOCAB) -> ClientHead:
    g = torch.Generator().manual_seed(0)
    embed = torch.nn.Embedding(vocab, HIDDEN)
    lm_head = torch.nn.Linear(HIDDEN, vocab, bias=False)
    with torch.no_grad():
        embed.weight.copy_(torch.randn(vocab, HIDDEN, generator=g))
        lm_head.weight.copy_(torch.randn(vocab, HIDDEN, generator=g))
    return ClientHead(embed, LlamaRMSNorm(HIDDEN), lm_head, vocab)


class FakeSession:
    """Causal "blocks": output at i = tanh(cumulative sum of inputs 0..i). While `lying`, outputs
    of steps at positions >= `lie_from` are altered (like a hoster caught and dropped later)."""

    def __init__(self, lie_from: int | None = None):
        self.inputs: list[torch.Tensor] = []
        self.lie_from = lie_from
        self.lying = lie_from is not None
        self.steps: list[tuple[int, bool]] = []  # (position, lied)

    def step(self, x: torch.Tensor, position: int) -> torch.Tensor:
        assert position <= len(self.inputs)
        del self.inputs[position:]  # rollback
        self.inputs.extend(x[:, i] for i in range(x.shape[1]))
        out = torch.tanh(torch.cumsum(torch.stack(self.inputs, dim=1), dim=1))[:, position:]
        lied = self.lying and position >= self.lie_from
        if lied:
            out = out.flip(-1) * 3.0
        self.steps.append((position, lied))
        return out


class FakeGate:
    """Every step is checked; a check resolves `delay` state() calls later (a liar -> rewind there)."""

    def __init__(self, session: FakeSession, delay: int):
        self.session, self.delay = session, delay
        self.pending: list[tuple[int, bool, int]] = []  # (position, lied, due)
        self.clock = self.seen = 0
        self.rollback: int | None = None
        self.rewinds: list[int] = []

    def _resolve(self, all_: bool = False) -> None:
        keep = []
        for pos, lied, due in self.pending:
            if all_ or due <= self.clock:
                if lied:
                    self.session.lying = False  # the liar is dropped: the new route is honest
                    self.rollback = pos if self.rollback is None else min(self.rollback, pos)
            else:
                keep.append((pos, lied, due))
        self.pending = keep

    def state(self):
        if len(self.session.steps) > self.seen:  # the real checks are spawned by the session's step
            self.seen = len(self.session.steps)
            pos, lied = self.session.steps[-1]
            self.pending.append((pos, lied, self.clock + self.delay))
            self.clock += 1
            self._resolve()
        return self.rollback, min((p for p, _, _ in self.pending), default=None)

    def rewind(self, position: int) -> None:
        self.rewinds.append(position)
        self.rollback = None
        self.pending = [c for c in self.pending if c[0] < position]

    def settle(self) -> None:
        self._resolve(all_=True)


def _tokens(params: SamplingParams, prompt: torch.Tensor, session: FakeSession, gate=None) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(prompt.shape[0])]
    for events in generate_events(_head(), session.step, prompt, params, gate=gate):
        for ev in events:
            out[ev.index].append(ev.token_id)
    return out


@pytest.mark.parametrize("delay", [0, 1, 3, 100])
@pytest.mark.parametrize("lie_from", [0, 5, 11])
@pytest.mark.parametrize("sampling", [dict(do_sample=False),
                                      dict(do_sample=True, seed=3, temperature=0.8, repetition_penalty=1.3,
                                           presence_penalty=0.5)])
def test_a_failed_check_regenerates_and_no_wrong_token_is_yielded(delay, lie_from, sampling):
    prompt = torch.tensor([[4, 8, 15, 16, 23, 42], [1, 2, 3, 5, 7, 11]])
    params = SamplingParams.create(max_new_tokens=16, **sampling)
    want = _tokens(params, prompt, FakeSession())
    liar = FakeSession(lie_from)
    assert _tokens(params, prompt, FakeSession(lie_from)) != want  # unchecked, the lie reaches the consumer
    gate = FakeGate(liar, delay)
    assert _tokens(params, prompt, liar, gate) == want
    first_lie = min(p for p, lied in liar.steps if lied)
    assert gate.rewinds and gate.rewinds[0] == first_lie


def test_without_failures_every_token_is_released_once():
    prompt = torch.tensor([[4, 8, 15, 16]])
    params = SamplingParams.create(max_new_tokens=20)
    session = FakeSession()
    gate = FakeGate(session, 2)
    assert _tokens(params, prompt, session, gate) == _tokens(params, prompt, FakeSession())
    assert not gate.rewinds and not gate.pending


def test_rewinding_restores_grammar_text_and_stop_string_state():
    """Constrained (JSON schema), sampled, with text and a stop string: the events after a rewind are
    exactly those of an honest run (grammar matchers, detokenizer, stop matcher and RNG restored)."""
    from subnet.client.constraints import Grammar
    from subnet.model.tiny_model import build_tokenizer

    tok = build_tokenizer()
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"enum": ["x", "yy"]}},
              "required": ["a", "b"], "additionalProperties": False}

    def run(session, gate=None):
        params = SamplingParams.create(max_new_tokens=24, do_sample=True, seed=5, stop=["yy"],
                                       constraint=Grammar.json_schema(tok, schema, (tok.eos_token_id,)))
        return [(ev.token_id, ev.text, ev.finish_reason) for evs in
                generate_events(_head(len(tok)), session.step, torch.tensor([[3, 4, 5]]), params,
                                eos_token_ids=(tok.eos_token_id,), tokenizer=tok, want_text=True, gate=gate)
                for ev in evs]

    want = run(FakeSession())
    assert len(want) > 4
    liar = FakeSession(6)
    gate = FakeGate(liar, 2)
    assert run(liar, gate) == want
    assert gate.rewinds == [6]


def _spec_tokens(params: SamplingParams, prompt: torch.Tensor, session: FakeSession, gate=None) -> list[list[int]]:
    from subnet.client.speculative_loop import speculative_events

    out: list[list[int]] = [[] for _ in range(prompt.shape[0])]
    for events in speculative_events(_head(), session.step, prompt, params, gate=gate):
        for ev in events:
            out[ev.index].append(ev.token_id)
    return out


@pytest.mark.parametrize("lie_from", [0, 5, 13])
def test_speculative_loop_settles_checks_and_redoes_a_failed_step(lie_from):
    """Speculative decoding walks drafts and emits at once: with a gate it settles a step's pending
    checks first, and a step a check failed is sent again (over the new route), so greedy tokens stay
    those of the plain loop without any liar."""
    prompt = torch.tensor([[4, 8, 15, 16, 4, 8, 15, 16, 4, 8], [1, 2, 3, 1, 2, 3, 1, 2, 3, 1]])
    params = SamplingParams.create(max_new_tokens=16)
    want = _tokens(params, prompt, FakeSession())
    assert _spec_tokens(params, prompt, FakeSession()) == want  # speculation alone changes nothing
    assert _spec_tokens(params, prompt, FakeSession(lie_from)) != want  # unchecked, the lie reaches the consumer
    liar = FakeSession(lie_from)
    gate = FakeGate(liar, 3)
    assert _spec_tokens(params, prompt, liar, gate) == want
    assert gate.rewinds and gate.rewinds[0] == min(p for p, lied in liar.steps if lied)


def test_a_rewind_cuts_the_record_of_fed_tokens():
    """`fed` (the token ids a later session may reuse as a prefix) holds only what the session
    finally holds: a rewind drops the ids fed after the failed step."""
    prompt = torch.tensor([[4, 8, 15, 16, 23, 42]])
    params = SamplingParams.create(max_new_tokens=12)
    honest: list[int] = []
    list(generate_events(_head(), FakeSession().step, prompt, params, fed=honest))
    liar = FakeSession(8)
    gate, fed = FakeGate(liar, 3), []
    list(generate_events(_head(), liar.step, prompt, params, gate=gate, fed=fed))
    assert gate.rewinds and fed == honest and len(fed) == len(liar.inputs)
