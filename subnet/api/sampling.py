"""One mapping from the API's `GenerationParams` to the client's `SamplingParams`.

Both backends sample with the client's `Sampler` (and detokenize with its
`IncrementalDetokenizer`), so `seed`, `temperature`, `top_p` and the penalties give the
same tokens whether the blocks run in this process or on the swarm; `top_k`, `min_p`,
`repetition_penalty` and `logit_bias` act in greedy decoding too where they can change the
argmax (bias and penalties), and `logprobs` come from the same sampler.
"""

from __future__ import annotations

from typing import Any

from subnet.api.backends import GenerationParams
from subnet.client.sampling import SamplingParams


def to_sampling_params(params: GenerationParams) -> SamplingParams:
    """OpenAI semantics: temperature 0 is greedy; stop strings stay with the API layer."""
    return SamplingParams(
        max_new_tokens=params.max_tokens,
        do_sample=params.temperature > 0,
        temperature=params.temperature if params.temperature > 0 else 1.0,
        top_p=params.top_p,
        seed=params.seed,
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        top_k=params.top_k,
        min_p=params.min_p,
        repetition_penalty=params.repetition_penalty,
        logit_bias=params.logit_bias,
        logprobs=params.logprobs,
        constraint=params.constraint,
        # False -> 0 (off), True -> None (the default), k -> at most k drafts per step
        speculative=(None if params.speculative else 0) if isinstance(params.speculative, bool) else params.speculative,
        seed_per_row=True,  # a batch of n choices samples what n requests seeded seed, seed+1, ... would
    )


def eos_token_ids(*sources: Any) -> set[int]:
    """End-of-sequence ids named by any of `sources` (configs, generation configs, tokenizers)."""
    ids: set[int] = set()
    for source in sources:
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(i) for i in value)
    return ids
