"""Next-token selection: greedy or sampled, with penalties, seeded and batched.

Matches `transformers` semantics where transformers has the knob (repetition penalty over
prompt + generated tokens, then temperature -> top-k -> top-p warping), and OpenAI semantics
for presence/frequency penalties (over generated tokens only). Everything is vectorised over
the batch so the per-token cost stays a handful of small tensor ops.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

FinishReason = str  # "stop" | "length"


@dataclass(frozen=True)
class SamplingParams:
    """All generation controls in one value (what an API layer fills from a request)."""

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    min_new_tokens: int = 0
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        if self.do_sample and not self.temperature > 0:
            raise ValueError("temperature must be > 0 when sampling")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if not self.repetition_penalty > 0:
            raise ValueError("repetition_penalty must be > 0")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop sequences must be non-empty strings")

    @classmethod
    def create(cls, stop: str | int | list | tuple | None = None, **kwargs) -> SamplingParams:
        """Build from loose arguments: `stop` may mix strings and token ids; a zero temperature means greedy."""
        strings: list[str] = []
        ids: list[int] = list(kwargs.pop("stop_token_ids", None) or ())
        if stop is not None:
            for s in [stop] if isinstance(stop, (str, int)) else stop:
                if isinstance(s, bool):
                    raise ValueError("stop entries must be strings or token ids")
                if isinstance(s, int):
                    ids.append(s)
                else:
                    strings.append(str(s))
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
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
        if params.do_sample:
            self._generator = torch.Generator(device="cpu")
            if params.seed is not None:
                self._generator.manual_seed(int(params.seed) & 0xFFFF_FFFF_FFFF_FFFF)
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

    def __call__(self, logits: torch.Tensor, step: int = 0, suppress: list[int] | None = None) -> torch.Tensor:
        """Pick the next token per row from `logits` `[batch, vocab]`; returns int64 `[batch]`."""
        p = self.params
        logits = logits.float()
        if logits.shape[-1] != self.vocab_size:
            logits = logits[..., : self.vocab_size]
        if self._seen is not None:
            penalised = torch.where(logits < 0, logits * p.repetition_penalty, logits / p.repetition_penalty)
            logits = torch.where(self._seen, penalised, logits)
        if self._counts is not None:
            logits = logits - p.frequency_penalty * self._counts - p.presence_penalty * (self._counts > 0).float()
        if suppress and step < p.min_new_tokens:
            logits = logits.clone()
            logits[:, suppress] = float("-inf")
        if not p.do_sample:
            tokens = logits.argmax(dim=-1)
        else:
            tokens = self._sample(logits)
        self._update(tokens)
        return tokens

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        p = self.params
        if p.temperature != 1.0:
            logits = logits / p.temperature
        if p.top_k and p.top_k < logits.shape[-1]:
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
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=self._generator).squeeze(-1)

    def _update(self, tokens: torch.Tensor) -> None:
        idx = tokens.view(-1, 1).clamp(0, self.vocab_size - 1)
        if self._seen is not None:
            self._seen.scatter_(1, idx, True)
        if self._counts is not None:
            self._counts.scatter_add_(1, idx, torch.ones(idx.shape, dtype=torch.float32))
