"""Speculative decoding without a network: drafts, the acceptance rule, and the token loop against
plain decoding over a local model whose KV cache rolls back like a hoster's."""

from __future__ import annotations

import pytest
import torch

from subnet.client.generation import ClientHead, generate_events
from subnet.client.sampling import Sampler, SamplingParams
from subnet.client.speculative import DraftController, NgramDrafter, accept_point_draft, speculation_wanted
from subnet.client.speculative_loop import speculative_events


def test_ngram_drafter_continues_the_most_recent_match():
    d = NgramDrafter(min_ngram=2, max_ngram=3)
    seq = [1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 1, 2, 3]
    assert d.draft(seq, 2) == [4, 5]  # the longest n-gram first: "1 2 3" occurred at the start
    assert d.draft([1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 6, 2, 3], 2) == [7, 8]  # else the most recent "2 3"
    assert d.draft([1, 2, 3, 4, 5, 1, 2, 3], 10) == [4, 5, 1, 2, 3]
    assert d.draft([5, 6, 7, 8], 4) == []  # no repeated n-gram: no draft
    assert d.draft(seq, 0) == []


def test_acceptance_rule_keeps_the_target_distribution():
    """Point-mass draft x: accept with p(x), else sample p without x; emitted tokens follow p."""
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])
    trials = 20000
    g = torch.Generator().manual_seed(7)
    counts = torch.zeros(4, 5)
    accepted = torch.zeros(4)
    for row, x in enumerate([0, 1, 3, 4]):  # likely, less likely, rare drafts; one batch of `trials` rows each
        drafts = torch.full((trials,), x)
        tokens, ok = accept_point_draft(torch.log(p).repeat(trials, 1), drafts, greedy=False,
                                        generators=[g] * trials)
        counts[row] = torch.bincount(tokens, minlength=5).float()
        accepted[row] = ok.float().sum()
    drafts = torch.tensor([0, 1, 3, 4])
    freq = counts / trials
    for row in range(4):
        # each frequency within 4 standard errors of its probability
        se = torch.sqrt(p * (1 - p) / trials)
        assert torch.all((freq[row] - p).abs() < 4 * se + 1e-3), (row, freq[row])
        assert abs(accepted[row] / trials - p[drafts[row]]) < 4 * (0.25 / trials) ** 0.5
    # a rejected draft is never the emitted token
    never = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0])
    tokens, ok = accept_point_draft(torch.log(never + 1e-45).view(1, -1), torch.tensor([2]), greedy=False,
                                    generators=[torch.Generator().manual_seed(0)])
    assert tokens.tolist() == [4] and ok.tolist() == [False]


def test_greedy_acceptance_is_argmax():
    logits = torch.tensor([[0.1, 3.0, 2.0], [5.0, 0.0, 1.0]])
    tokens, ok = accept_point_draft(logits, torch.tensor([1, 2]), greedy=True, generators=[None, None])
    assert tokens.tolist() == [1, 0] and ok.tolist() == [True, False]


def test_controller_stops_drafting_when_drafts_fail_and_probes_again():
    c = DraftController(6)
    assert c.next_k() == 0  # no plain step measured yet
    c.record(0, 0, 0.010)
    assert c.next_k() >= 1
    for _ in range(20):
        c.record(4, 0, 0.013)  # every draft rejected, extra positions cost
    ks = [c.next_k() for _ in range(16)]
    assert ks.count(0) >= 14 and 1 in ks  # plain steps, with an occasional one-token probe
    for _ in range(30):
        c.record(6, 6, 0.011)  # everything accepted, positions cheap
    assert c.next_k() == 6


def test_speculation_defaults():
    assert speculation_wanted(SamplingParams())
    assert speculation_wanted(SamplingParams(do_sample=True))
    assert not speculation_wanted(SamplingParams(do_sample=True, seed=3))  # seeded draws stay as without a chain
    assert speculation_wanted(SamplingParams(do_sample=True, seed=3, speculative=4))
    assert not speculation_wanted(SamplingParams(speculative=0))
    assert SamplingParams.create(speculative=False).speculative == 0
    assert SamplingParams.create(speculative=True).speculative is None
    for bad in (-1, 17, 2.5, "4"):
        with pytest.raises(ValueError):
            SamplingParams(speculative=bad)


class LocalChain:
    """All blocks in-process with a KV cache that rolls back to `position` like a hoster's session."""

    def __init__(self, model):
        from transformers import DynamicCache

        self.model, self.cache = model, DynamicCache(config=model.config)
        self.steps = self.positions = self.rollbacks = 0

    @torch.inference_mode()
    def step(self, hidden: torch.Tensor, position: int) -> torch.Tensor:
        length = self.cache.get_seq_length()
        assert position <= length
        if position < length:
            self.cache.crop(position - length)  # negative: drop that many positions
            self.rollbacks += 1
        self.steps += 1
        self.positions += hidden.shape[1]
        out = self.model.model(inputs_embeds=hidden, cache=self.cache, use_cache=True)
        return out.last_hidden_state  # normed: the head below has an identity norm


class Garbage:
    """A drafter whose drafts are always wrong (forces rollbacks)."""

    def draft(self, tokens, k):
        return [(tokens[-1] * 7 + 3 + i) % 50 for i in range(k)]


@pytest.fixture(scope="module")
def local_model(tiny_model_factory):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama")).eval()


def run(model, loop, ids, params, **kw):
    head = ClientHead(model.model.embed_tokens, torch.nn.Identity(), model.lm_head, model.config.vocab_size)
    chain = LocalChain(model)
    tokens = [[] for _ in range(ids.shape[0])]
    events = []
    for evs in loop(head, chain.step, ids, params, **kw):
        for ev in evs:
            tokens[ev.index].append(ev.token_id)
            events.append(ev)
    return tokens, chain, events


def repetitive_ids(batch: int = 1) -> torch.Tensor:
    base = [5, 17, 23, 42, 8, 99, 3, 61, 17, 23, 42, 8, 99, 3, 61, 17, 23, 42]
    return torch.tensor([base[i:] + base[:i] for i in range(batch)])


@pytest.mark.parametrize("batch", [1, 2])
def test_greedy_speculative_equals_plain_and_saves_round_trips(local_model, batch):
    ids = repetitive_ids(batch)
    params = SamplingParams(max_new_tokens=40)
    plain, plain_chain, _ = run(local_model, generate_events, ids, params)
    controller = DraftController(6)
    spec, chain, _ = run(local_model, speculative_events, ids, params, controller=controller)
    assert spec == plain
    assert controller.accepted > 0 and chain.steps < plain_chain.steps


def test_rejected_drafts_roll_back_and_tokens_still_match(local_model):
    ids = repetitive_ids(2)
    params = SamplingParams(max_new_tokens=24)
    plain, _, _ = run(local_model, generate_events, ids, params)
    controller = DraftController(4, probe_every=1)
    spec, chain, _ = run(local_model, speculative_events, ids, params, drafter=Garbage(), controller=controller)
    assert spec == plain
    assert chain.rollbacks > 0 and controller.drafted > controller.accepted


def test_max_tokens_and_stop_tokens_are_never_passed(local_model):
    ids = repetitive_ids(1)
    plain, _, _ = run(local_model, generate_events, ids, SamplingParams(max_new_tokens=30))
    for limit in (1, 2, 7):
        spec, _, events = run(local_model, speculative_events, ids, SamplingParams(max_new_tokens=limit))
        assert spec[0] == plain[0][:limit] and events[-1].finish_reason == "length"
    stop = plain[0][12]
    first = plain[0].index(stop)
    params = SamplingParams(max_new_tokens=30, stop_token_ids=(stop,))
    spec, _, events = run(local_model, speculative_events, ids, params)
    assert spec[0] == plain[0][:first + 1] and events[-1].finish_reason == "stop"


def test_sampling_with_penalties_applies_the_same_processing(local_model):
    """Every verified position sees the processing a plain step would: with top_k=1 sampling is the
    argmax of the penalised logits, so speculative and plain outputs agree token for token."""
    ids = repetitive_ids(1)
    params = SamplingParams(max_new_tokens=30, do_sample=True, top_k=1, temperature=0.7, repetition_penalty=1.3,
                            frequency_penalty=0.4, logit_bias=((7, 2.0),), logprobs=2)
    plain, _, plain_events = run(local_model, generate_events, ids, params)
    spec, _, events = run(local_model, speculative_events, ids, params, drafter=NgramDrafter(1, 3))
    assert spec == plain
    assert [e.logprobs.token_id for e in events] == [e.logprobs.token_id for e in plain_events]
    assert [e.logprobs.logprob for e in events] == pytest.approx([e.logprobs.logprob for e in plain_events], abs=1e-4)


def test_sampler_split_is_the_same_as_call():
    logits = torch.randn(2, 30, generator=torch.Generator().manual_seed(1))
    params = SamplingParams(do_sample=True, seed=5, temperature=0.8, top_p=0.9, presence_penalty=0.5)
    a = Sampler(params, torch.zeros(2, 1, dtype=torch.long), 30)
    b = Sampler(params, torch.zeros(2, 1, dtype=torch.long), 30)
    for i in range(10):
        processed = b.process(logits, i)
        tok = b.pick(processed)
        b.commit(tok, processed)
        assert a(logits, i).tolist() == tok.tolist()


def test_a_local_draft_model_with_the_same_tokenizer(local_model, tiny_model_factory):
    """`load_drafter`: the served checkpoint itself as draft model agrees with every greedy token;
    a draft model with another tokenizer is refused."""
    from transformers import AutoTokenizer

    from subnet.client.draft_model import load_drafter

    path = tiny_model_factory("llama")
    tok = AutoTokenizer.from_pretrained(path)
    drafter = load_drafter(path, tok, local_model.config.vocab_size)
    ids = repetitive_ids(1)
    params = SamplingParams(max_new_tokens=20)
    plain, _, _ = run(local_model, generate_events, ids, params)
    controller = DraftController(4)
    spec, chain, _ = run(local_model, speculative_events, ids, params, drafter=drafter, controller=controller)
    assert spec == plain and controller.accepted == controller.drafted > 0
    from subnet.model.tiny_model import build_tokenizer

    with pytest.raises(ValueError, match="tokenizer"):
        load_drafter(path, build_tokenizer(300), local_model.config.vocab_size)


class FixedDrafts:
    def draft(self, tokens, k):
        return [0, 1, 2][:k]


def test_sampled_sequences_keep_the_model_distribution():
    """The whole loop with sampling: a bigram "model" (one-hot embeddings, an identity chain, logits
    log P[last]) and drafts that are often wrong; pairs of consecutive tokens follow the exact
    Markov-chain probabilities (each cell within 4.5 standard errors)."""
    vocab, runs, n_new = 4, 3000, 4
    P = torch.tensor([[0.1, 0.6, 0.2, 0.1], [0.5, 0.1, 0.3, 0.1], [0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1]])
    embed = torch.nn.Embedding(vocab, vocab)
    lm_head = torch.nn.Linear(vocab, vocab, bias=False)
    with torch.no_grad():
        embed.weight.copy_(torch.eye(vocab))
        lm_head.weight.copy_(torch.log(P).T)
    head = ClientHead(embed, torch.nn.Identity(), lm_head, vocab)
    counts = torch.zeros(n_new - 1, vocab, vocab)
    spec_rounds = 0
    for seed in range(runs):
        c = DraftController(3)
        c.t_plain, c.t_position = 1.0, 0.0  # drafting pays from the first round
        params = SamplingParams(max_new_tokens=n_new, do_sample=True, seed=seed, speculative=3)
        toks = [ev.token_id for evs in speculative_events(head, lambda h, pos: h, torch.tensor([[3]]), params,
                                                          drafter=FixedDrafts(), controller=c) for ev in evs]
        spec_rounds += c.spec_rounds
        for t in range(n_new - 1):
            counts[t, toks[t], toks[t + 1]] += 1
    assert spec_rounds >= runs  # every generation verified drafts
    first = P[3]  # prompt token 3
    marginal = first.clone()
    for t in range(n_new - 1):
        exact = marginal[:, None] * P  # P(t_t = a, t_{t+1} = b)
        freq = counts[t] / runs
        se = torch.sqrt(exact * (1 - exact) / runs)
        assert torch.all((freq - exact).abs() <= 4.5 * se + 1e-3), (t, freq, exact)
        marginal = marginal @ P


class Oracle:
    """Drafts the known continuation `seq` (after `start` tokens), every third draft corrupted."""

    def __init__(self, seq: list[int], start: int):
        self.seq, self.start = seq, start

    def draft(self, tokens, k):
        at = len(tokens) - self.start
        out = self.seq[at:at + k]
        return [t if (at + i) % 3 else (t + 1) % 50 for i, t in enumerate(out)]


def test_structured_output_with_drafts_equals_plain(local_model, tiny_model_factory):
    """The grammar matcher only ever sees committed tokens, so constrained speculative decoding
    gives the plain constrained output (and forbidden drafts are simply rejected)."""
    import json

    from transformers import AutoTokenizer

    from subnet.client.constraints import Grammar

    tok = AutoTokenizer.from_pretrained(tiny_model_factory("llama"))
    schema = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99}},
              "required": ["a"], "additionalProperties": False}
    grammar = Grammar.json_schema(tok, schema, eos_ids=(tok.eos_token_id,))
    ids = repetitive_ids(1)
    params = SamplingParams(max_new_tokens=40, constraint=grammar)
    plain, _, _ = run(local_model, generate_events, ids, params)
    controller = DraftController(4, probe_every=1)
    spec, _, _ = run(local_model, speculative_events, ids, params, drafter=Oracle(plain[0], ids.shape[1]),
                     controller=controller)
    assert spec == plain and controller.accepted > 0 and controller.drafted > controller.accepted
    text = tok.decode([t for t in spec[0] if t != tok.eos_token_id])
    assert set(json.loads(text)) == {"a"}
