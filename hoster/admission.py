"""Per-peer admission for every hoster RPC: decided before any work, refused with `busy`.

A peer is the libp2p identity calling (`context.remote_id`; for `rpc_push` the stream's
sender). Limits (constants: they protect the hoster and leave honest traffic alone):

- `forward`: at most `FORWARD_PER_PEER` calls in flight per peer (admitted and not yet
  answered) and `FORWARD_TOTAL` over all peers; and a token bucket per peer of
  `FORWARD_POSITIONS_PER_S` positions (rows x length) per second, `FORWARD_BURST` deep.
  So at most `FORWARD_TOTAL` inputs of <= max_tensor_bytes (and their outputs) are held.
- `inference`: at most `STREAMS_PER_PEER` open streams per peer (an API node carries many
  users' sessions, so this is generous; the KV budget and max_sessions bound the rest) and
  `OPENS_PER_S` session opens per second per peer (`OPENS_BURST` deep). A stream has at
  most one step in flight, each bounded by max_request_tokens and the KV budget.
- `info`: `INFO_PER_S` calls per second per peer (`INFO_BURST` deep).
- `push`: at most `PUSH_STREAMS_PER_PEER` concurrent push streams per sender and
  `PUSH_FRAMES_PER_S` frames per second per sender (`PUSH_BURST` deep; over it frames are
  dropped, as for an unknown session). Frame size is bounded before reading (hoster.push).

A refusal is the protocol error `busy` whose message says which limit and, for a rate,
`retry after N s`: clients already treat `busy` as "try later or elsewhere". Per-peer
state is dropped once a peer is idle and its buckets are full again (`MAX_PEERS` bounds it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

FORWARD_PER_PEER = 2
FORWARD_TOTAL = 8
FORWARD_POSITIONS_PER_S = 8192.0
FORWARD_BURST = 16384.0
STREAMS_PER_PEER = 256
OPENS_PER_S = 50.0
OPENS_BURST = 100.0
INFO_PER_S = 10.0
INFO_BURST = 20.0
PUSH_STREAMS_PER_PEER = 4
PUSH_FRAMES_PER_S = 5000.0
PUSH_BURST = 10000.0
MAX_PEERS = 4096  # tracked peers before idle ones are forgotten


class Refused(Exception):
    """Not admitted: protocol error `busy` with this message."""

    type = "busy"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved; `take(n)` spends n or says how long to wait."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = burst, time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, n: float = 1.0) -> float:
        """0.0 if n tokens were spent, else the seconds until they would be there (nothing spent).
        A request larger than `burst` is admitted when the bucket is full (it then goes negative)."""
        self._refill()
        need = min(n, self.burst)
        if self.tokens >= need:
            self.tokens -= n
            return 0.0
        return (need - self.tokens) / self.rate

    def full(self) -> bool:
        self._refill()
        return self.tokens >= self.burst


@dataclass
class _Peer:
    forward: TokenBucket = field(default_factory=lambda: TokenBucket(FORWARD_POSITIONS_PER_S, FORWARD_BURST))
    opens: TokenBucket = field(default_factory=lambda: TokenBucket(OPENS_PER_S, OPENS_BURST))
    info: TokenBucket = field(default_factory=lambda: TokenBucket(INFO_PER_S, INFO_BURST))
    push: TokenBucket = field(default_factory=lambda: TokenBucket(PUSH_FRAMES_PER_S, PUSH_BURST))
    forwards: int = 0  # in flight
    streams: int = 0  # open inference streams
    push_streams: int = 0

    def idle(self) -> bool:
        return not (self.forwards or self.streams or self.push_streams) and all(
            b.full() for b in (self.forward, self.opens, self.info, self.push))


class Admission:
    """The servicer's per-peer counters and buckets (event-loop only, no locks)."""

    def __init__(self) -> None:
        self._peers: dict[str, _Peer] = {}
        self.forwards = 0  # in flight, all peers
        self.refused: dict[str, int] = {}  # rpc -> refusals (observability, tests)

    def _peer(self, peer: str) -> _Peer:
        p = self._peers.get(peer)
        if p is None:
            if len(self._peers) >= MAX_PEERS:
                for key in [k for k, v in self._peers.items() if v.idle()]:
                    del self._peers[key]
            p = self._peers[peer] = _Peer()
        return p

    def _refuse(self, rpc: str, message: str) -> Refused:
        self.refused[rpc] = self.refused.get(rpc, 0) + 1
        return Refused(message)

    @staticmethod
    def _rate(wait: float, what: str) -> str:
        return f"{what} rate limit for this peer; retry after {max(wait, 0.01):.2f} s"

    def info(self, peer: str) -> None:
        wait = self._peer(peer).info.take()
        if wait:
            raise self._refuse("info", self._rate(wait, "info"))

    def forward(self, peer: str, positions: int) -> None:
        """Admit one forward of `positions` (call `forward_done` when it is answered) or raise Refused."""
        p = self._peer(peer)
        if p.forwards >= FORWARD_PER_PEER:
            raise self._refuse("forward", f"{p.forwards} forward calls of this peer are in progress "
                                          f"(at most {FORWARD_PER_PEER})")
        if self.forwards >= FORWARD_TOTAL:
            raise self._refuse("forward", f"{self.forwards} forward calls are in progress (at most {FORWARD_TOTAL})")
        wait = p.forward.take(positions)
        if wait:
            raise self._refuse("forward", self._rate(wait, "forward positions"))
        p.forwards += 1
        self.forwards += 1

    def forward_done(self, peer: str) -> None:
        self._peer(peer).forwards -= 1
        self.forwards -= 1

    def open_stream(self, peer: str) -> None:
        """Admit an inference stream (call `close_stream` when it ends) or raise Refused."""
        p = self._peer(peer)
        if p.streams >= STREAMS_PER_PEER:
            raise self._refuse("inference", f"{p.streams} inference streams of this peer are open "
                                            f"(at most {STREAMS_PER_PEER})")
        p.streams += 1

    def open_session(self, peer: str) -> None:
        """A session open request on an admitted stream: rate limited per peer."""
        wait = self._peer(peer).opens.take()
        if wait:
            raise self._refuse("inference", self._rate(wait, "session open"))

    def close_stream(self, peer: str) -> None:
        self._peer(peer).streams -= 1

    def open_push(self, peer: str) -> bool:
        p = self._peer(peer)
        if p.push_streams >= PUSH_STREAMS_PER_PEER:
            self.refused["push"] = self.refused.get("push", 0) + 1
            return False
        p.push_streams += 1
        return True

    def close_push(self, peer: str) -> None:
        self._peer(peer).push_streams -= 1

    def push_frame(self, peer: str) -> bool:
        if self._peer(peer).push.take():
            self.refused["push"] = self.refused.get("push", 0) + 1
            return False
        return True

    def peers(self) -> int:
        return len(self._peers)
