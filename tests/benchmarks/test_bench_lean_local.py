"""The lean local loop (benchmarks/lean_local.py) gives local transformers' greedy tokens."""

from __future__ import annotations

import torch

from benchmarks.lean_local import LeanLocal


def test_lean_loop_equals_transformers_greedy(tiny_model) -> None:
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    loop = LeanLocal(tiny_model)
    gen = torch.Generator().manual_seed(3)
    for prompt_len in (5, 300):  # 300: the prompt crosses the hoster's 256-position prefill chunk
        ids = torch.randint(0, ref.config.vocab_size, (1, prompt_len), generator=gen)
        want = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, min_new_tokens=12,
                            do_sample=False)
        got = loop.generate(ids, 12)
        assert got.shape == want.shape
        assert torch.equal(got, want)


def test_compiled_lean_loop_runs_its_steps_compiled_with_the_same_tokens(tiny_model) -> None:
    """The compiled local row (what compiled hosters are held against) really takes the compiled step
    for every one-position step, and greedy tokens stay transformers' (fp32 rounding aside)."""
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    loop = LeanLocal(tiny_model, compiled=True)
    ids = torch.randint(0, ref.config.vocab_size, (1, 7), generator=torch.Generator().manual_seed(5))
    want = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, min_new_tokens=12,
                        do_sample=False)
    assert torch.equal(loop.generate(ids, 12), want)
    assert loop.compiled.steps == 11 and loop.compiled.fallbacks == 0  # every step after the prompt's
