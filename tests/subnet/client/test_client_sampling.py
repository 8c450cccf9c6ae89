"""Sampling controls: greedy, seeded reproducibility, warpers and penalties."""

from __future__ import annotations

import pytest
import torch

from subnet.client.sampling import Sampler, SamplingParams


def logits_row(values: list[float]) -> torch.Tensor:
    return torch.tensor([values], dtype=torch.float32)


def test_greedy_is_argmax():
    s = Sampler(SamplingParams(), torch.tensor([[0]]), 4)
    assert s(logits_row([0.1, 3.0, 2.0, -1.0])).tolist() == [1]


def test_seeded_sampling_is_reproducible():
    logits = torch.randn(2, 50, generator=torch.Generator().manual_seed(0))
    params = SamplingParams(do_sample=True, seed=1234, temperature=0.9)
    runs = []
    for _ in range(2):
        s = Sampler(params, torch.zeros(2, 1, dtype=torch.long), 50)
        runs.append([s(logits, i).tolist() for i in range(20)])
    assert runs[0] == runs[1]
    other = Sampler(params.with_(seed=99), torch.zeros(2, 1, dtype=torch.long), 50)
    assert [other(logits, i).tolist() for i in range(20)] != runs[0]


def test_top_k_one_is_greedy():
    s = Sampler(SamplingParams(do_sample=True, top_k=1, seed=0), torch.tensor([[0]]), 5)
    for _ in range(10):
        assert s(logits_row([0.0, 0.5, 0.4, 0.1, 0.2])).item() == 1


def test_top_p_keeps_only_the_nucleus():
    # probabilities ~ [0.64, 0.24, 0.09, 0.03]: top_p=0.7 keeps the first two only
    logits = torch.log(torch.tensor([[0.64, 0.24, 0.09, 0.03]]))
    s = Sampler(SamplingParams(do_sample=True, top_p=0.7, seed=0), torch.tensor([[0]]), 4)
    seen = {s(logits).item() for _ in range(300)}
    assert seen == {0, 1}


def test_top_p_matches_transformers_warper():
    from transformers.generation.logits_process import TopPLogitsWarper

    logits = torch.randn(3, 40, generator=torch.Generator().manual_seed(3))
    ours = Sampler(SamplingParams(do_sample=True, top_p=0.8, seed=0), torch.zeros(3, 1, dtype=torch.long), 40)
    expected = TopPLogitsWarper(0.8)(torch.zeros(3, 1, dtype=torch.long), logits.clone())
    # compare which tokens are allowed: sample many times, nothing outside the kept set appears
    allowed = [set(torch.nonzero(torch.isfinite(row)).flatten().tolist()) for row in expected]
    for _ in range(200):
        for row, tok in enumerate(ours(logits).tolist()):
            assert tok in allowed[row]


def test_repetition_penalty_matches_transformers():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    prompt = torch.tensor([[1, 3]])
    logits = logits_row([1.0, 1.4, -1.0, 1.45, 0.5])
    expected = RepetitionPenaltyLogitsProcessor(1.5)(prompt, logits.clone()).argmax(-1)
    s = Sampler(SamplingParams(repetition_penalty=1.5), prompt, 5)
    assert s(logits).tolist() == expected.tolist() == [0]


def test_presence_and_frequency_penalties_discourage_repeats():
    logits = logits_row([2.0, 1.5, 0.0])
    plain = Sampler(SamplingParams(), torch.tensor([[2]]), 3)
    assert [plain(logits).item() for _ in range(3)] == [0, 0, 0]
    pres = Sampler(SamplingParams(presence_penalty=1.0), torch.tensor([[2]]), 3)
    assert [pres(logits).item() for _ in range(3)] == [0, 1, 0]
    freq = Sampler(SamplingParams(frequency_penalty=0.3), torch.tensor([[2]]), 3)
    assert [freq(logits).item() for _ in range(4)] == [0, 0, 1, 0]


def test_params_create_splits_stop_and_treats_zero_temperature_as_greedy():
    p = SamplingParams.create(stop=["END", 7, "\n\n"], temperature=0, do_sample=True, max_new_tokens=5)
    assert p.stop == ("END", "\n\n") and p.stop_token_ids == (7,) and not p.do_sample
    assert SamplingParams.create(stop="x").stop == ("x",)
    with pytest.raises(ValueError):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError):
        SamplingParams(stop=("",))
