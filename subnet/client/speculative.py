"""Speculative decoding through the chain: drafts, the acceptance rule, and when to draft.

A chain round trip costs the same for one position as for a few: the client drafts `k` tokens
locally, sends `[last, d_1..d_k]` through the hosters in one step (k+1 positions) and keeps the
longest accepted prefix plus one token of its own; hosters drop the rejected positions by the
ordinary rollback (the next step starts at a smaller position, docs/PROTOCOL.md).

Drafts are deterministic (prompt lookup, or a small local model decoding greedily), so the
draft distribution is a point mass and the speculative-sampling rule of Leviathan et al. /
Chen et al. becomes: accept draft `x` with probability `p(x)`; on rejection sample from `p`
with `x` removed and renormalised. Every emitted token is then distributed exactly as `p` given
its prefix. Greedy decoding accepts `x` iff it is the argmax, so greedy output is unchanged.

`DraftController` decides how many tokens to draft from the measured acceptance rate and the
measured cost of an extra position, so that speculation only runs where it pays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

DEFAULT_DRAFT_TOKENS = 6  # the most tokens drafted per step when a request does not say
MIN_NGRAM, MAX_NGRAM = 2, 4  # prompt-lookup n-gram sizes (longest match first)
MAX_LOOKBACK = 8192  # prompt lookup searches at most this many most recent tokens


class NgramDrafter:
    """Prompt lookup: the tokens that followed the most recent earlier occurrence of the last n-gram.

    Costs no model and finds a lot when the output repeats the context (editing code the prompt
    contains, quoting, structured text). No match: no draft, so the step is a plain one.
    """

    def __init__(self, min_ngram: int = MIN_NGRAM, max_ngram: int = MAX_NGRAM):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError("need 1 <= min_ngram <= max_ngram")
        self.min_ngram, self.max_ngram = min_ngram, max_ngram

    def draft(self, tokens: Sequence[int], k: int) -> list[int]:
        """Up to `k` draft tokens continuing `tokens` (possibly none)."""
        if k <= 0:
            return []
        seq = list(tokens[-MAX_LOOKBACK:])
        n_tok = len(seq)
        for n in range(min(self.max_ngram, n_tok - 1), self.min_ngram - 1, -1):
            tail = seq[n_tok - n:]
            first = tail[0]
            # the most recent earlier occurrence with at least one token after it
            for i in range(n_tok - n - 1, -1, -1):
                if seq[i] == first and seq[i:i + n] == tail:
                    return seq[i + n:i + n + k]
        return []


class ModelDrafter:
    """A small local causal LM with the same tokenizer, decoding greedily (a point-mass draft).

    Recomputes its prefix each step (no cache kept across steps): it is meant for small draft
    models where that costs less than a chain round trip.
    """

    def __init__(self, model: torch.nn.Module, vocab_size: int | None = None):
        self.model = model.eval()
        self.vocab_size = vocab_size

    @torch.inference_mode()
    def draft(self, tokens: Sequence[int], k: int) -> list[int]:
        if k <= 0:
            return []
        ids = torch.tensor([list(tokens)], dtype=torch.long)
        out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=k, do_sample=False,
                                  pad_token_id=0)
        new = out[0, ids.shape[1]:].tolist()
        return [t for t in new if self.vocab_size is None or t < self.vocab_size][:k]


def accept_point_draft(processed: torch.Tensor, draft: torch.Tensor, *, greedy: bool,
                       generators: Sequence[torch.Generator | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """The speculative-sampling rule for deterministic drafts, one verified position of every row.

    `processed` `[batch, vocab]`: the target's processed logits (after penalties, grammar mask and
    warpers); `draft` `[batch]`: the drafted token per row. Returns `(tokens, accepted)`: per row
    the token to emit (the draft when accepted) and whether the draft was accepted.
    Greedy: accept iff the draft is the argmax (the token is the argmax either way).
    Sampling: accept with probability `p(draft)`; otherwise draw from `p` with the draft removed,
    renormalised. Row `i` draws its randomness from `generators[i]`.
    """
    draft = draft.long()
    if greedy:
        tokens = processed.argmax(dim=-1)
        return tokens, tokens == draft
    probs = torch.softmax(processed.float(), dim=-1)
    if len(generators) > 1 and all(g is generators[0] for g in generators):  # one generator: vectorised
        return _accept_shared(probs, draft, generators[0])
    tokens = draft.clone()
    accepted = torch.zeros(draft.shape, dtype=torch.bool)
    for i in range(probs.shape[0]):
        p_x = float(probs[i, draft[i]])
        u = float(torch.rand((), generator=generators[i]))
        if u < p_x:
            accepted[i] = True
            continue
        residual = probs[i].clone()
        residual[draft[i]] = 0.0
        if not float(residual.sum()) > 0:  # p(draft) == 1 but u >= 1 cannot happen; stay safe
            tokens[i] = draft[i]
            accepted[i] = True
            continue
        tokens[i] = torch.multinomial(residual / residual.sum(), 1, generator=generators[i]).view(())
    return tokens, accepted


def _accept_shared(probs: torch.Tensor, draft: torch.Tensor,
                   generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`accept_point_draft` for rows drawing from one generator, without a per-row loop."""
    rows = torch.arange(probs.shape[0])
    p_x = probs[rows, draft]
    accepted = torch.rand(probs.shape[0], generator=generator) < p_x
    residual = probs.clone()
    residual[rows, draft] = 0.0
    empty = ~(residual.sum(dim=-1) > 0)
    residual[empty, 0] = 1.0  # those rows accept (p(draft) == 1); keep multinomial well defined
    accepted |= empty
    resampled = torch.multinomial(residual, 1, generator=generator).squeeze(-1)
    return torch.where(accepted, draft, resampled), accepted


class DraftController:
    """How many tokens to draft next: the k maximising expected tokens per second.

    With per-token acceptance rate `a`, a step verifying `k` drafts emits on average
    `(1 - a^(k+1)) / (1 - a)` tokens and costs `t1 + k * tp` (`t1` a plain step, `tp` one more
    position: both measured, as moving averages). `k = 0` (a plain step) wins when drafts are
    rarely accepted (below `min_accept`) or positions are expensive; then every `probe_every`
    steps one token is drafted anyway so a change in the text is noticed.
    """

    def __init__(self, max_k: int = DEFAULT_DRAFT_TOKENS, *, prior_accept: float = 0.4, smoothing: float = 0.3,
                 probe_every: int = 8, min_accept: float = 0.15):
        self.max_k = max(0, int(max_k))
        self.accept = prior_accept
        self.smoothing = smoothing
        self.probe_every = probe_every
        self.min_accept = min_accept  # below this acceptance rate drafting is off (but for probes)
        self.t_plain: float | None = None
        self.t_position: float | None = None
        self._declined = 0
        self.drafted = self.accepted = self.rounds = self.spec_rounds = 0  # observability

    def next_k(self) -> int:
        if self.max_k == 0:
            return 0
        if self.t_plain is None:
            return 0  # measure a plain step first
        tp = self.t_position if self.t_position is not None else 0.1 * self.t_plain
        a = min(self.accept, 0.999)
        best_k, best_rate = 0, 1.0 / self.t_plain
        for k in range(1, self.max_k + 1 if a >= self.min_accept else 1):
            rate = (1 - a ** (k + 1)) / (1 - a) / (self.t_plain + k * tp)
            if rate > best_rate * 1.0001:
                best_k, best_rate = k, rate
        if best_k == 0:
            self._declined += 1
            if self._declined >= self.probe_every:
                self._declined = 0
                return 1
        else:
            self._declined = 0
        return best_k

    def record(self, drafted: int, accepted: int, seconds: float) -> None:
        """One round: `drafted` drafts sent (0: a plain step), `accepted` of them kept, its duration."""
        self.rounds += 1
        s = self.smoothing
        if drafted == 0:
            self.t_plain = seconds if self.t_plain is None else (1 - s) * self.t_plain + s * seconds
            return
        self.spec_rounds += 1
        self.drafted += drafted
        self.accepted += accepted
        self.accept = (1 - s) * self.accept + s * (accepted / drafted)
        if self.t_plain is not None:
            extra = max(seconds - self.t_plain, 0.0) / drafted
            self.t_position = extra if self.t_position is None else (1 - s) * self.t_position + s * extra

    @property
    def tokens_per_round(self) -> float:
        """Tokens emitted per chain round trip so far (1.0 without speculation)."""
        return (self.rounds + self.accepted) / self.rounds if self.rounds else math.nan


def speculation_wanted(params) -> bool:
    """Whether a request speculates (`SamplingParams.speculative`): 0 never; k >= 1 always; unset
    (the default) for greedy decoding and for unseeded sampling. A seeded sampling request that
    does not ask keeps plain steps, so it draws exactly the tokens the same seed gives without a
    chain (the local backend, earlier versions): speculation keeps the distribution, not the draws."""
    if params.speculative is not None:
        return params.speculative > 0
    return not params.do_sample or params.seed is None
