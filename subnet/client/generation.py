"""The token loop: embed -> remote blocks -> norm + LM head -> sampler -> stop checks -> events.

Independent of the network: it drives any `step(hidden, position) -> hidden` callable (a
`RemoteSession` in production), so the stop/finish/text logic is testable on its own.
Per token it does one embedding lookup, one remote step, one `[batch, hidden] x lm_head`
product and the sampler; text is detokenized only when a caller wants text or stop strings.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from subnet.client.sampling import Sampler, SamplingParams, TokenLogprobs
from subnet.client.streaming import IncrementalDetokenizer, StopStringMatcher

StepFn = Callable[[torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class StreamEvent:
    """One generated token of one sequence (row `index`), the text it completed, and the finish reason.

    `text` may be "" while a multi-byte character or a possible stop string is held back.
    `finish_reason` is "stop" (EOS, stop token or stop string) or "length" on the last event, else None.
    `token_id` is None only for the single event of a zero-token generation.
    `logprobs` is set when `SamplingParams.logprobs` asks for it (computed from the same
    processed logits the token was chosen from).
    """

    token_id: int | None
    text: str
    finish_reason: str | None = None
    index: int = 0
    logprobs: TokenLogprobs | None = None


@dataclass
class Completion:
    """A finished generation of one sequence (what an OpenAI-style API returns)."""

    token_ids: list[int]
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.completion_tokens = len(self.token_ids)


@dataclass
class _Row:
    detok: IncrementalDetokenizer | None
    matcher: StopStringMatcher | None
    finish: str | None = None

    def text_of(self, token_id: int) -> tuple[str, bool]:
        if self.detok is None:
            return "", False
        delta = self.detok.add(token_id)
        return self.matcher.feed(delta) if self.matcher else (delta, False)

    def flush(self) -> tuple[str, bool]:
        """All held-back text at the end; reports a stop string found in that tail."""
        if self.detok is None:
            return "", False
        tail = self.detok.flush()
        if self.matcher is None:
            return tail, False
        out, hit = self.matcher.feed(tail)
        return (out, True) if hit else (out + self.matcher.flush(), False)


class _HeadJob:
    __slots__ = ("x", "result", "error", "done")

    def __init__(self, x: torch.Tensor):
        self.x, self.result, self.error, self.done = x, None, None, False


class ClientHead:
    """The client's local weights: embeddings, final norm and LM head (from `load_client_parts`).

    `logits` combines concurrent callers (sessions generating in other threads) into one
    LM-head product: the `[vocab, hidden]` matrix is read from memory once for all of them
    instead of once per session (on a CPU a one-row product costs nearly as much as eight;
    measured: 8 concurrent sessions spent ~6 ms each per token on it). A lone caller computes
    alone, exactly as before.
    """

    def __init__(self, embed: torch.nn.Embedding, norm: torch.nn.Module, lm_head: torch.nn.Module, vocab_size: int):
        self.embed, self.norm, self.lm_head = embed, norm, lm_head
        self.vocab_size = vocab_size
        self._cv = threading.Condition()
        self._pending: list[_HeadJob] = []
        self._busy = False

    @torch.inference_mode()
    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed(ids)

    @torch.inference_mode()
    def _head(self, last: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(last))[:, -1, :].float()

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of the last position: `[batch, vocab]` float32 (norm + head on that position only)."""
        job = _HeadJob(hidden[:, -1:, :])
        with self._cv:
            self._pending.append(job)
            while not job.done and self._busy:
                self._cv.wait()
            if job.done:
                return _result(job)
            self._busy = True  # we lead: take everything waiting (our own job included)
            jobs, self._pending = self._pending, []
        try:
            if len(jobs) == 1:
                jobs[0].result = self._head(jobs[0].x)
            else:
                out = self._head(torch.cat([j.x for j in jobs]))
                r = 0
                for j in jobs:
                    j.result, r = out[r:r + j.x.shape[0]], r + j.x.shape[0]
        except BaseException as e:  # every combined caller gets the error
            for j in jobs:
                j.error = e
        finally:
            with self._cv:
                for j in jobs:
                    j.done = True
                self._busy = False
                self._cv.notify_all()
        return _result(job)


def _result(job: _HeadJob) -> torch.Tensor:
    if job.error is not None:
        raise job.error
    return job.result


def generate_events(
    head: ClientHead,
    step: StepFn,
    input_ids: torch.Tensor,
    params: SamplingParams,
    *,
    eos_token_ids: tuple[int, ...] = (),
    tokenizer=None,
    want_text: bool = False,
    should_stop: Callable[[], bool] | None = None,
    start: int = 0,
    shared_rows: bool = False,
    fed: list[int] | None = None,
) -> Iterator[list[StreamEvent]]:
    """Generate for `input_ids` `[batch, T]` (no padding); yield, per step, events of the rows still running.

    Rows finish independently; finished rows are fed their last token again (harmless: rows
    never attend to each other) until every row is done or `max_new_tokens` is reached.
    `start`: positions the session already holds (a reused prefix: only the rest is sent).
    `shared_rows`: every row has the same prompt, sent once (the hosters prefill it once).
    `fed` collects the token ids of row 0 fed so far (what a later session may reuse).
    """
    batch, prompt_len = input_ids.shape
    if prompt_len == 0:
        raise ValueError("empty prompt")
    need_text = want_text or bool(params.stop)
    if need_text and tokenizer is None:
        raise ValueError("text output and stop strings need a tokenizer")
    rows = [
        _Row(IncrementalDetokenizer(tokenizer) if need_text else None,
             StopStringMatcher(params.stop) if params.stop else None)
        for _ in range(batch)
    ]
    if params.max_new_tokens == 0:
        yield [StreamEvent(None, "", "length", i) for i in range(batch)]
        return
    stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else set(eos_token_ids))
    if params.constraint is not None:  # a completed grammar ends the row with one of these
        stop_ids |= set(params.constraint.eos_ids)
    suppress = sorted(stop_ids) if params.min_new_tokens else None
    sampler = Sampler(params, input_ids, head.vocab_size)

    tokens = input_ids[:1, start:] if shared_rows else input_ids[:, start:]
    position = start
    if fed is not None:
        fed.extend(input_ids[0, :start].tolist())
    for n in range(params.max_new_tokens):
        hidden = step(head.embed_ids(tokens), position)
        position += tokens.shape[1]
        if fed is not None:
            fed.extend(tokens[0].tolist())
        logits = head.logits(hidden)
        if logits.shape[0] != batch:  # one shared row: every row samples from it
            logits = logits.expand(batch, -1).clone()
        next_tokens = sampler(logits, n, suppress)
        ids = next_tokens.tolist()
        lps = sampler.last_logprobs
        events: list[StreamEvent] = []
        last = n + 1 == params.max_new_tokens
        for i, tok in enumerate(ids):
            row = rows[i]
            if row.finish is not None:
                continue
            finish = None
            if tok in stop_ids and n >= params.min_new_tokens:
                text, _ = row.flush()
                finish = "stop"
            else:
                text, hit = row.text_of(tok)
                if hit:
                    finish = "stop"
                elif last:
                    tail, hit = row.flush()
                    text += tail
                    finish = "stop" if hit else "length"
            row.finish = finish
            events.append(StreamEvent(tok, text, finish, i, lps[i] if lps is not None else None))
        yield events
        if all(r.finish is not None for r in rows) or (should_stop is not None and should_stop()):
            return  # done, or the consumer went away (`should_stop`): the caller closes the session
        tokens = next_tokens.view(batch, 1)
