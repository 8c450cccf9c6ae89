"""What a session keeps per span of its route: the hoster's stream, the inputs it was sent (replayed
to a replacement hoster after a failure), and the direct step request still in flight."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from subnet.client.routing import Span
from subnet.client.transport import InferenceStream
from subnet.client.verification import SpanCheck


@dataclass
class SpanState:
    span: Span
    history: torch.Tensor | None = None  # [batch, max_length, hidden]: inputs sent to this span
    server_pos: int = 0  # positions held in the hoster's KV cache
    stream: InferenceStream | None = None
    open_error: BaseException | None = None  # from the concurrent open in `InferenceSession.open`
    check: SpanCheck = field(default_factory=SpanCheck)  # receipts and checks (subnet.client.verification)
    sent: SentStep | None = None  # the direct step request whose answer is outstanding
    resume: bool = False  # wait for `sent`'s answer instead of sending the step again


@dataclass
class SentStep:
    """A direct step request in flight: enough to keep waiting for its answer after a missed deadline."""
    position: int  # the session step it belongs to
    need: int  # the first position sent
    inp: torch.Tensor
    timeout: float  # its outer bound, from `t0`
    t0: float


def record_history(st: SpanState, inp: torch.Tensor, start: int, max_length: int) -> None:
    """Keep what span `st` was sent at positions `start..`: replayed to a replacement hoster."""
    end = start + inp.shape[1]
    st.history = ensure_capacity(st.history, start, end, max_length, inp)
    st.history[:, start:end] = inp


def ensure_capacity(history: torch.Tensor | None, keep: int, needed: int, max_length: int,
                    like: torch.Tensor) -> torch.Tensor:
    """A history buffer holding at least `needed` positions (grows by doubling, keeps `[:keep]`)."""
    if history is not None and history.shape[1] >= needed and history.dtype == like.dtype \
            and history.shape[0] == like.shape[0]:  # one shared row becomes a batch's rows (`narrow`)
        return history
    capacity = min(max_length, max(needed, 64, 2 * (history.shape[1] if history is not None else 0)))
    grown = torch.empty(like.shape[0], capacity, like.shape[-1], dtype=like.dtype)
    if history is not None and keep > 0:
        grown[:, :keep] = history[:, :keep].to(like.dtype)
    return grown
