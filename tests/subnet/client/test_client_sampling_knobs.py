"""The vLLM-style knobs of the client sampler: min_p, logit_bias, top_k=-1, and per-step logprobs."""

from __future__ import annotations

import pytest
import torch

from subnet.client.sampling import Sampler, SamplingParams


def _prompt(batch: int = 1) -> torch.Tensor:
    return torch.zeros(batch, 1, dtype=torch.long)


def test_min_p_matches_transformers_warper():
    from transformers.generation.logits_process import MinPLogitsWarper

    logits = torch.randn(3, 40, generator=torch.Generator().manual_seed(5)) * 3
    s = Sampler(SamplingParams(do_sample=True, min_p=0.2, seed=0), _prompt(3), 40)
    expected = MinPLogitsWarper(0.2)(_prompt(3), logits.clone())
    assert torch.equal(torch.isfinite(s.warp(logits)), torch.isfinite(expected))


def test_warpers_run_in_transformers_order():
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    logits = torch.randn(2, 50, generator=torch.Generator().manual_seed(7)) * 2
    params = SamplingParams(do_sample=True, temperature=0.7, top_k=20, top_p=0.9, min_p=0.05)
    ours = Sampler(params, _prompt(2), 50).warp(logits)
    theirs = LogitsProcessorList([TemperatureLogitsWarper(0.7), TopKLogitsWarper(20), TopPLogitsWarper(0.9),
                                  MinPLogitsWarper(0.05)])(_prompt(2), logits.clone())
    assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs))
    assert torch.allclose(ours[torch.isfinite(ours)], theirs[torch.isfinite(theirs)])


def test_logit_bias_bans_and_forces():
    row = torch.tensor([[0.0, 5.0, 1.0, 2.0]])
    ban = Sampler(SamplingParams(logit_bias=((1, -100.0),)), _prompt(), 4)
    assert ban(row).item() == 3
    force = Sampler(SamplingParams.create(logit_bias={"2": 100}), _prompt(), 4)
    assert force(row).item() == 2
    sampled = Sampler(SamplingParams(do_sample=True, seed=1, logit_bias=((0, 100.0),)), _prompt(), 4)
    assert {sampled(row).item() for _ in range(50)} == {0}


def test_top_k_minus_one_disables():
    s = Sampler(SamplingParams(do_sample=True, top_k=-1, seed=0), _prompt(), 4)
    assert {s(torch.zeros(1, 4)).item() for _ in range(200)} == {0, 1, 2, 3}


@pytest.mark.parametrize("kwargs", [dict(min_p=1.5), dict(min_p=-0.1), dict(top_k=-2), dict(logprobs=21),
                                    dict(logit_bias=((1, 101.0),)), dict(logit_bias=((-1, 1.0),)),
                                    dict(repetition_penalty=0.0)])
def test_bad_values_raise(kwargs):
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)


def test_logit_bias_outside_vocab_raises():
    with pytest.raises(ValueError):
        Sampler(SamplingParams(logit_bias=((9, 1.0),)), _prompt(), 4)


def test_logprobs_are_log_softmax_of_processed_logits():
    logits = torch.randn(2, 30, generator=torch.Generator().manual_seed(2))
    s = Sampler(SamplingParams(logprobs=3), _prompt(2), 30)
    tokens = s(logits)
    expected = torch.log_softmax(logits, dim=-1)
    for row, lp in enumerate(s.last_logprobs):
        assert lp.token_id == tokens[row].item()
        assert lp.logprob == pytest.approx(expected[row, lp.token_id].item(), abs=1e-6)
        values, ids = expected[row].topk(3)
        assert [t for t, _ in lp.top] == ids.tolist()
        assert [v for _, v in lp.top] == pytest.approx(values.tolist(), abs=1e-6)
    # sampling: the distribution after temperature (what the token was drawn from)
    hot = Sampler(SamplingParams(do_sample=True, temperature=0.5, seed=0, logprobs=0), _prompt(2), 30)
    tokens = hot(logits)
    ref = torch.log_softmax(logits / 0.5, dim=-1)
    for row, lp in enumerate(hot.last_logprobs):
        assert lp.top == ()
        assert lp.logprob == pytest.approx(ref[row, tokens[row]].item(), abs=1e-5)
