"""Next-token selection: greedy or sampled, with penalties, seeded and batched.

Order of logits processing (vLLM's processors first, then transformers' warpers):
`logit_bias` (OpenAI/vLLM: added to the raw logits) -> repetition penalty (transformers:
over prompt + generated tokens) -> presence/frequency penalties (OpenAI: over generated
tokens only) -> min-tokens EOS suppression -> grammar mask (`constraint`: tokens the grammar
forbids get -inf, `subnet.client.constraints`) -> [sampling only] temperature -> top-k -> top-p
-> min-p (transformers' warper order). Greedy decoding takes the argmax after the penalties.
With `logprobs` set, each step also reports the log-softmax of exactly those processed logits
(the distribution the token was drawn from) for the chosen token and the top alternatives.
Everything is vectorised over the batch so the per-token cost stays a few small tensor ops.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

FinishReason = str  # "stop" | "length"
MAX_LOGPROBS = 20
MAX_LOGIT_BIAS = 100.0
MAX_SPECULATIVE = 16  # draft tokens per step (subnet.client.speculative)
_SEED_MASK = 0xFFFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class TokenLogprobs:
    """Log-probability of the chosen token and the `k` most likely ones (descending), one row."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class SamplingParams:
    """All generation controls in one value (what an API layer fills from a request)."""

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 (or -1, as vLLM) disables
    min_p: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias in [-100, 100])
    logprobs: int | None = None  # None: off; k >= 0: chosen token + k alternatives per step
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    # row i draws from its own generator seeded `seed + i`: a batch of n choices samples exactly
    # what n separate single-row generations seeded seed, seed+1, ... would (n > 1 as one batch)
    seed_per_row: bool = False
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    min_new_tokens: int = 0
    # speculative decoding (subnet.client.speculative): None = on where it helps (adaptive, up to the
    # default draft length), 0 = off, k = at most k draft tokens verified per chain round trip
    speculative: int | None = None
    extra: dict = field(default_factory=dict, compare=False)
    constraint: Any = field(default=None, compare=False)  # a `constraints.Grammar`: masks logits per row

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        if self.do_sample and not self.temperature > 0:
            raise ValueError("temperature must be > 0 when sampling")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < -1:
            raise ValueError("top_k must be -1, 0 (disabled) or a positive integer")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError("min_p must be in [0, 1]")
        for tok, bias in self.logit_bias:
            if int(tok) < 0 or not -MAX_LOGIT_BIAS <= float(bias) <= MAX_LOGIT_BIAS:
                raise ValueError("logit_bias maps token ids >= 0 to biases in [-100, 100]")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise ValueError(f"logprobs must be in [0, {MAX_LOGPROBS}]")
        if not self.repetition_penalty > 0:
            raise ValueError("repetition_penalty must be > 0")
        if self.speculative is not None and (isinstance(self.speculative, bool) or not isinstance(self.speculative, int)
                                             or not 0 <= self.speculative <= MAX_SPECULATIVE):
            raise ValueError(f"speculative must be an integer in [0, {MAX_SPECULATIVE}] (0 turns it off)")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop sequences must be non-empty strings")

    @classmethod
    def create(cls, stop: str | int | list | tuple | None = None, **kwargs) -> SamplingParams:
        """Build from loose arguments: `stop` may mix strings and token ids; a zero temperature means greedy."""
        strings: list[str] = []
        ids: list[int] = list(kwargs.pop("stop_token_ids", None) or ())
        bias = kwargs.pop("logit_bias", None)
        if isinstance(bias, dict):
            kwargs["logit_bias"] = tuple((int(k), float(v)) for k, v in bias.items())
        elif bias:
            kwargs["logit_bias"] = tuple(bias)
        if stop is not None:
            for s in [stop] if isinstance(stop, (str, int)) else stop:
                if isinstance(s, bool):
                    raise ValueError("stop entries must be strings or token ids")
                if isinstance(s, int):
                    ids.append(s)
                else:
                    strings.append(str(s))
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        if isinstance(kwargs.get("speculative"), bool):  # True: on (the default), False: off
            kwargs["speculative"] = None if kwargs["speculative"] else 0
        if kwargs.get("temperature") == 0:
            kwargs["do_sample"] = False
            kwargs["temperature"] = 1.0
        return cls(stop=tuple(strings), stop_token_ids=tuple(ids), **kwargs)

    def with_(self, **changes) -> SamplingParams:
        return replace(self, **changes)


class Sampler:
    """Stateful per-generation sampler: keeps token counts and the RNG for one session."""

    def __init__(self, params: SamplingParams, prompt_ids: torch.Tensor, vocab_size: int):
        self.params = params
        self.vocab_size = vocab_size
        batch = prompt_ids.shape[0]
        self._generator: torch.Generator | None = None
        self._row_generators: list[torch.Generator] | None = None
        if params.do_sample and params.seed_per_row and params.seed is not None and batch > 1:
            self._row_generators = [torch.Generator(device="cpu").manual_seed((int(params.seed) + i) & _SEED_MASK)
                                    for i in range(batch)]
        elif params.do_sample:
            self._generator = torch.Generator(device="cpu")
            if params.seed is not None:
                self._generator.manual_seed(int(params.seed) & _SEED_MASK)
            else:
                self._generator.seed()
        # Tokens already seen (prompt + generated) for the repetition penalty.
        self._seen: torch.Tensor | None = None
        if params.repetition_penalty != 1.0:
            self._seen = torch.zeros(batch, vocab_size, dtype=torch.bool)
            self._seen.scatter_(1, prompt_ids.clamp(0, vocab_size - 1).long(), True)
        # Generated-token counts for presence/frequency penalties.
        self._counts: torch.Tensor | None = None
        if params.presence_penalty or params.frequency_penalty:
            self._counts = torch.zeros(batch, vocab_size, dtype=torch.float32)
        self._bias: torch.Tensor | None = None
        if params.logit_bias:
            if any(int(t) >= vocab_size for t, _ in params.logit_bias):
                raise ValueError(f"logit_bias token ids must be < the vocabulary size {vocab_size}")
            self._bias = torch.zeros(vocab_size, dtype=torch.float32)
            for tok, b in params.logit_bias:
                self._bias[int(tok)] = float(b)
        self.grammar = params.constraint.start(batch) if params.constraint is not None else None
        # Per row, the last step's logprobs (when `params.logprobs` is set).
        self.last_logprobs: list[TokenLogprobs] | None = None

    def __call__(self, logits: torch.Tensor, step: int = 0, suppress: list[int] | None = None) -> torch.Tensor:
        """Pick the next token per row from `logits` `[batch, vocab]`; returns int64 `[batch]`."""
        processed = self.process(logits, step, suppress)
        tokens = self.pick(processed)
        self.commit(tokens, processed)
        return tokens

    def process(self, logits: torch.Tensor, step: int = 0, suppress: list[int] | None = None) -> torch.Tensor:
        """The logits the token is chosen from: bias, penalties, suppression, grammar and (when
        sampling) the warpers, given the tokens committed so far (speculative decoding calls this
        once per verified position, committing in between)."""
        p = self.params
        logits = logits.float()
        if logits.shape[-1] != self.vocab_size:
            logits = logits[..., : self.vocab_size]
        if self._bias is not None:
            logits = logits + self._bias
        if self._seen is not None:
            penalised = torch.where(logits < 0, logits * p.repetition_penalty, logits / p.repetition_penalty)
            logits = torch.where(self._seen, penalised, logits)
        if self._counts is not None:
            logits = logits - p.frequency_penalty * self._counts - p.presence_penalty * (self._counts > 0).float()
        if suppress and step < p.min_new_tokens:
            logits = logits.clone()
            logits[:, suppress] = float("-inf")
        if self.grammar is not None:
            logits = self.grammar.mask(logits)
            dead = torch.isinf(logits).all(dim=-1)  # grammar wants to end but min tokens forbids it
            if dead.any() and self.grammar.grammar.eos_ids:
                logits[dead, self.grammar.grammar.eos_ids[0]] = 0.0
        return self.warp(logits) if p.do_sample else logits

    def pick(self, processed: torch.Tensor) -> torch.Tensor:
        """Argmax (greedy) or a draw from softmax(`processed`) with the session's generator(s)."""
        if not self.params.do_sample:
            return processed.argmax(dim=-1)
        probs = torch.softmax(processed, dim=-1)
        if self._row_generators is not None:
            return torch.cat([torch.multinomial(probs[i:i + 1], num_samples=1, generator=g).view(1)
                              for i, g in enumerate(self._row_generators)])
        return torch.multinomial(probs, num_samples=1, generator=self._generator).squeeze(-1)

    def generator(self, row: int) -> torch.Generator | None:
        """The generator row `row` draws from (None when greedy)."""
        return self._row_generators[row] if self._row_generators is not None else self._generator

    def commit(self, tokens: torch.Tensor, processed: torch.Tensor) -> None:
        """Record the chosen `tokens` (logprobs from `processed`, penalty counts, grammar state)."""
        if self.params.logprobs is not None:
            self.last_logprobs = token_logprobs(processed, tokens, self.params.logprobs)
        self._update(tokens)
        if self.grammar is not None:
            self.grammar.advance(tokens)

    def warp(self, logits: torch.Tensor) -> torch.Tensor:
        """Temperature -> top-k -> top-p -> min-p, as transformers' warpers (masked tokens get -inf)."""
        p = self.params
        if p.temperature != 1.0:
            logits = logits / p.temperature
        if p.top_k > 0 and p.top_k < logits.shape[-1]:
            kth = torch.topk(logits, p.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if p.top_p < 1.0:
            # Same rule as transformers' TopPLogitsWarper: drop the low tail whose mass <= 1 - top_p,
            # always keeping the most likely token.
            sorted_logits, sorted_idx = torch.sort(logits, descending=False, dim=-1)
            cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            remove_sorted = cumulative <= (1 - p.top_p)
            remove_sorted[..., -1:] = False
            remove = remove_sorted.scatter(1, sorted_idx, remove_sorted)
            logits = logits.masked_fill(remove, float("-inf"))
        if p.min_p > 0.0:
            # transformers' MinPLogitsWarper: drop tokens below min_p x the top probability.
            probs = torch.softmax(logits, dim=-1)
            threshold = p.min_p * probs.amax(dim=-1, keepdim=True)
            logits = logits.masked_fill(probs < threshold, float("-inf"))
        return logits

    def snapshot(self) -> tuple:
        """The sampler's state, to `restore` when the token loop rewinds (subnet/client/holdback.py)."""
        return (None if self._seen is None else self._seen.clone(),
                None if self._counts is None else self._counts.clone(),
                None if self._generator is None else self._generator.get_state(),
                None if self._row_generators is None else [g.get_state() for g in self._row_generators],
                None if self.grammar is None else self.grammar.copy(), self.last_logprobs)

    def restore(self, snap: tuple) -> None:
        seen, counts, gen, rows, grammar, self.last_logprobs = snap
        self._seen = None if seen is None else seen.clone()
        self._counts = None if counts is None else counts.clone()
        if gen is not None:
            self._generator.set_state(gen)
        for g, st in zip(self._row_generators or [], rows or []):
            g.set_state(st)
        self.grammar = None if grammar is None else grammar.copy()

    def _update(self, tokens: torch.Tensor) -> None:
        idx = tokens.view(-1, 1).clamp(0, self.vocab_size - 1)
        if self._seen is not None:
            self._seen.scatter_(1, idx, True)
        if self._counts is not None:
            self._counts.scatter_add_(1, idx, torch.ones(idx.shape, dtype=torch.float32))


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, k: int) -> list[TokenLogprobs]:
    """Per row: log-softmax of `logits` at the chosen token, and the `k` largest (descending)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    chosen = logp.gather(1, tokens.view(-1, 1).long()).squeeze(1).tolist()
    if k > 0:
        values, ids = torch.topk(logp, min(k, logp.shape[-1]), dim=-1)
        tops = [tuple(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
    else:
        tops = [()] * len(chosen)
    return [TokenLogprobs(int(t), float(c), top) for t, c, top in zip(tokens.tolist(), chosen, tops, strict=True)]
