"""From a request to text deltas: prompt rendering, stop strings, per-choice streaming.

Backends yield tokens; this layer enforces `stop` on the decoded text (holding back a
tail that could still become a stop string), counts tokens, and closes the backend
stream as soon as the choice is finished, which stops the generation.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from subnet.api.backends import GenerationBackend, GenerationParams
from subnet.api.chat_render import render_chat
from subnet.api.metrics import ApiMetrics

__all__ = ["ChoiceStats", "Delta", "StopFilter", "render_chat", "stream_choice"]

class StopFilter:
    """Cuts text at the first stop string; never emits a prefix that might still become one."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False

    def _held(self) -> int:
        """Length of the longest tail of `pending` that is a proper prefix of some stop string."""
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.pending)), best, -1):
                if self.pending.endswith(s[:k]):
                    best = k
                    break
        return best

    def push(self, text: str) -> str:
        if self.stopped:
            return ""
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out = self.pending[: min(hits)]
            self.pending = ""
            self.stopped = True
            return out
        keep = self._held()
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


@dataclass
class Delta:
    """A piece of one choice: text to send, and the finish reason on the last piece."""

    text: str
    finish_reason: str | None = None
    logprobs: list = field(default_factory=list)  # (TokenLogprobs, text it added) per token since the last delta
    tool_calls: list | None = None  # chat: OpenAI tool call objects, on the last delta of a choice that made them


@dataclass
class ChoiceStats:
    completion_tokens: int = 0


async def stream_choice(backend: GenerationBackend, model: str, prompt_ids: list[int], params: GenerationParams,
                        metrics: ApiMetrics, stats: ChoiceStats) -> AsyncIterator[Delta]:
    """Yield the deltas of one choice; the backend stream is closed when this ends or is closed."""
    stop = StopFilter(params.stop)
    metrics.sessions.labels(model).inc()
    started = time.monotonic()
    first_at: float | None = None
    events = backend.stream(model, prompt_ids, params)
    finish: str | None = None
    lps: list = []  # logprobs travel with the next delta that carries text (or the last one)

    def take() -> list:
        nonlocal lps
        out, lps = lps, []
        return out

    try:
        async for ev in events:
            if ev.token_id is not None:
                stats.completion_tokens += 1
                metrics.completion_tokens.labels(model).inc()
                if first_at is None:
                    first_at = time.monotonic()
                    metrics.ttft.observe(first_at - started)
                if ev.logprobs is not None:
                    lps.append((ev.logprobs, ev.text))
            text = stop.push(ev.text) if ev.text else ""
            if stop.stopped:
                finish = "stop"
                if text:
                    yield Delta(text, None, take())
                break
            if ev.finish_reason:
                finish = ev.finish_reason
                text += stop.flush()
                if text:
                    yield Delta(text, None, take())
                break
            if text:
                yield Delta(text, None, take())
        else:
            finish = "stop"  # backend ended without a reason: treat as end of sequence
            tail = stop.flush()
            if tail:
                yield Delta(tail, None, take())
    finally:
        await _aclose(events)
        if first_at is not None and stats.completion_tokens > 1:
            elapsed = time.monotonic() - first_at
            if elapsed > 0:
                metrics.tokens_per_second.observe((stats.completion_tokens - 1) / elapsed)
    yield Delta("", finish, take())


async def _aclose(it: Any) -> None:
    close = getattr(it, "aclose", None)
    if close is not None:
        await close()
