"""The token loop: embed -> remote blocks -> norm + LM head -> sampler -> stop checks -> events.

Independent of the network: it drives any `step(hidden, position) -> hidden` callable (a
`RemoteSession` in production), so the stop/finish/text logic is testable on its own.
Per token it does one embedding lookup, one remote step, one `[batch, hidden] x lm_head`
product and the sampler; text is detokenized only when a caller wants text or stop strings.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch

from subnet.client.sampling import Sampler, SamplingParams, TokenLogprobs
from subnet.client.streaming import IncrementalDetokenizer, StopStringMatcher

StepFn = Callable[[torch.Tensor, int], torch.Tensor]


class StepGate(Protocol):
    """Pending client-side checks of the session `step` runs on (`subnet.client.holdback.SessionGate`)."""

    def state(self) -> tuple[int | None, int | None]: ...  # (position to rewind to, oldest pending position)

    def rewind(self, position: int) -> None: ...

    def settle(self) -> None: ...


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

    def copy(self) -> _Row:
        return _Row(None if self.detok is None else self.detok.copy(), copy.copy(self.matcher), self.finish)

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


def loop_setup(input_ids: torch.Tensor, params: SamplingParams, eos_token_ids: tuple[int, ...], tokenizer,
               want_text: bool) -> tuple[list[_Row], set[int], list[int] | None]:
    """What both token loops (plain, speculative) start with: a row state per sequence, the ids that
    end a row, and the ids suppressed until `min_new_tokens` are out."""
    batch, prompt_len = input_ids.shape
    if prompt_len == 0:
        raise ValueError("empty prompt")
    need_text = want_text or bool(params.stop)
    if need_text and tokenizer is None:
        raise ValueError("text output and stop strings need a tokenizer")
    rows = [_Row(IncrementalDetokenizer(tokenizer) if need_text else None,
                 StopStringMatcher(params.stop) if params.stop else None) for _ in range(batch)]
    stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else set(eos_token_ids))
    if params.constraint is not None:  # a completed grammar ends the row with one of these
        stop_ids |= set(params.constraint.eos_ids)
    return rows, stop_ids, sorted(stop_ids) if params.min_new_tokens else None


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
    gate: StepGate | None = None,
) -> Iterator[list[StreamEvent]]:
    """Generate for `input_ids` `[batch, T]` (no padding); yield, per step, events of the rows still running.

    Rows finish independently; finished rows are fed their last token again (harmless: rows
    never attend to each other) until every row is done or `max_new_tokens` is reached.
    `start`: positions the session already holds (a reused prefix: only the rest is sent).
    `shared_rows`: every row has the same prompt, sent once (the hosters prefill it once).
    `fed` collects the token ids of row 0 fed so far (what a later session may reuse).
    With a `gate` (`subnet/client/holdback.py`), events of steps with a check pending are held
    back, and a failed check rewinds the loop to the failed step (the events after it are never
    yielded).
    """
    batch = input_ids.shape[0]
    rows, stop_ids, suppress = loop_setup(input_ids, params, eos_token_ids, tokenizer, want_text)
    if params.max_new_tokens == 0:
        yield [StreamEvent(None, "", "length", i) for i in range(batch)]
        return
    sampler = Sampler(params, input_ids, head.vocab_size)

    tokens = input_ids[:1, start:] if shared_rows else input_ids[:, start:]
    position = start
    if fed is not None:
        fed.extend(input_ids[0, :start].tolist())
    n = 0
    held: list[tuple[_Checkpoint, list[StreamEvent]]] = []  # events waiting for a pending check
    while True:
        hidden = step(head.embed_ids(tokens), position)
        checkpoint = None
        if gate is not None:
            rewind, pending = gate.state()
            if rewind is not None:  # a check failed the step at `rewind`: regenerate from there
                if rewind != position:
                    n, position, tokens, rows = _rewind(held, rewind, sampler)
                tokens = tokens.expand(batch, -1) if tokens.shape[0] != batch else tokens  # rows differ now
                if fed is not None:
                    del fed[position:]
                gate.rewind(rewind)
                continue
            if pending is not None:
                checkpoint = _Checkpoint(n, position, tokens, sampler.snapshot(), [r.copy() for r in rows])
            else:  # every check so far passed: what was held is verified
                yield from (evs for _, evs in _take(held))
        position += tokens.shape[1]
        if fed is not None:
            fed.extend(tokens[0].tolist())
        logits = head.logits(hidden)
        if logits.shape[0] != batch:  # one shared row: every row samples from it
            logits = logits.expand(batch, -1).clone()
        next_tokens = sampler(logits, n, suppress)
        events = step_events(rows, next_tokens.tolist(), sampler.last_logprobs, n, params, stop_ids)
        last = n + 1 == params.max_new_tokens
        n += 1
        tokens = next_tokens.view(batch, 1)
        stopped = should_stop is not None and should_stop()
        finished = all(r.finish is not None for r in rows) or last
        if checkpoint is not None and not stopped:
            held.append((checkpoint, events))
            if finished or len(held) >= MAX_HELD_STEPS:
                gate.settle()  # the end, or too much held: wait for the verdicts
                rewind, _ = gate.state()
                if rewind is not None:
                    n, position, tokens, rows = _rewind(held, rewind, sampler)
                    tokens = tokens.expand(batch, -1) if tokens.shape[0] != batch else tokens
                    if fed is not None:
                        del fed[position:]
                    gate.rewind(rewind)
                    continue
                yield from (evs for _, evs in _take(held))
        elif not stopped:
            yield events
        if finished or stopped:
            return  # done, or the consumer went away (`should_stop`): the caller closes the session


def step_events(rows: list[_Row], ids: list[int], lps, n: int, params: SamplingParams,
                stop_ids: set[int]) -> list[StreamEvent]:
    """The events of sampling step `n` (token `ids[i]` for row i; rows already finished give none):
    a stop token (once `min_new_tokens` are out), a stop string or `max_new_tokens` ends a row.
    Shared by the plain and the speculative loop, so both end rows the same way."""
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
    return events


MAX_HELD_STEPS = 64  # beyond this many held steps the loop waits for the pending checks


@dataclass
class _Checkpoint:
    """The token loop just before sampling step `n` (fed `tokens` at `position`)."""

    n: int
    position: int
    tokens: torch.Tensor
    sampler: tuple
    rows: list[_Row]


def _rewind(held: list[tuple[_Checkpoint, list[StreamEvent]]], position: int,
            sampler: Sampler) -> tuple[int, int, torch.Tensor, list[_Row]]:
    """Drop the held steps from the one fed at `position` on and restore the loop to that step:
    returns its `n`, position, input tokens and rows (the sampler is restored in place)."""
    for i, (cp, _) in enumerate(held):
        if cp.position == position:
            del held[i:]
            sampler.restore(cp.sampler)
            return cp.n, cp.position, cp.tokens, [r.copy() for r in cp.rows]
    raise RuntimeError(f"no held step at position {position} to regenerate from")  # a check's step is always held


def _take(held: list) -> list:
    out = list(held)
    held.clear()
    return out
