"""Client side of prefix reuse (docs/PROTOCOL.md, "Prefix reuse"; the hoster side is hoster.prefix_cache).

When a session closes, the client remembers its token ids, its route and every span's input
history (it keeps them anyway, to replay after a failover and for checks). A new session whose
prompt shares a prefix with a remembered one goes to the same hosters and offers each, with
the open request, the input chain states (`consensus.evidence`) of that span's inputs at
candidate lengths: the very hashes the hoster computed over the rows it received, so only a
hoster that really holds KV for those inputs can hit, and no client can make another's key
point to wrong KV. The session starts at the shortest hit over the route: only the new tokens
travel and are computed. Histories come back from the record, so failover and checks still
see the whole prefix.

Records are bounded in number and bytes (least recently used dropped first); one row only
(a batch of different sequences is never remembered).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from consensus.evidence import chain_seed, extend_chain
from subnet.client.routing import Span

BOUNDARY = 32  # hosters index their cached prefixes every 32 positions (hoster.prefix_cache.BOUNDARY)
MAX_CANDIDATES = 64


@dataclass
class PrefixRecord:
    tokens: tuple[int, ...]  # the inputs the spans hold: positions [0, len(tokens))
    route: list[Span]
    histories: list[torch.Tensor]  # per span: [1, len(tokens), hidden], what it was sent
    passed: list[int]  # per span: checks its hoster passed in that session
    chains: list[bytearray | None]  # per span: input chain states, computed when first needed
    adapter: str | None = None  # the LoRA adapter the hosters computed it with: only that adapter reuses it

    @property
    def nbytes(self) -> int:
        return sum(h.numel() * h.element_size() for h in self.histories)

    def chain(self, i: int) -> bytearray:
        if self.chains[i] is None:
            h = self.histories[i]
            states = bytearray(chain_seed(h.dtype, 1, h.shape[2]))
            extend_chain(states, h, 0)
            self.chains[i] = states
        return self.chains[i]


class PrefixStore:
    """Recently closed sessions of one client, by content (thread-safe)."""

    def __init__(self, max_records: int = 32, max_bytes: int = 256 << 20):
        self.max_records, self.max_bytes = max_records, max_bytes
        self._records: OrderedDict[int, PrefixRecord] = OrderedDict()
        self._lock = threading.Lock()
        self._next = 0
        self.reused_positions = 0  # positions sessions did not send thanks to a hit (observability, tests)

    def save(self, tokens: Sequence[int], route: list[Span], histories: list[torch.Tensor], passed: list[int],
             adapter: str | None = None) -> None:
        if len(tokens) < BOUNDARY or not route:
            return
        rec = PrefixRecord(tuple(int(t) for t in tokens), list(route), [h.detach().clone() for h in histories],
                           list(passed), [None] * len(route), adapter)
        with self._lock:
            for key, old in list(self._records.items()):  # it extends (or repeats) an older record: drop that
                if old.route == rec.route and old.adapter == rec.adapter and rec.tokens[:len(old.tokens)] == old.tokens:
                    del self._records[key]
            self._records[self._next] = rec
            self._next += 1
            total = sum(r.nbytes for r in self._records.values())
            while self._records and (len(self._records) > self.max_records or total > self.max_bytes):
                total -= self._records.popitem(last=False)[1].nbytes

    def best(self, tokens: Sequence[int], adapter: str | None = None) -> tuple[PrefixRecord, int] | None:
        """The record of `adapter` (None: the base model) sharing the longest token prefix with `tokens`
        (at least BOUNDARY), and that length."""
        best, best_len, best_key = None, 0, -1
        with self._lock:
            for key, rec in self._records.items():
                n = _common(rec.tokens, tokens) if rec.adapter == adapter else 0
                if n > best_len:
                    best, best_len, best_key = rec, n, key
            if best is None or best_len < BOUNDARY:
                return None
            self._records.move_to_end(best_key)
        return best, best_len


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def candidates(states: bytearray, usable: int) -> list[list]:
    """`[[L, hex c_L], ...]` for L = usable and the multiples of BOUNDARY below it, longest first."""
    lengths = [usable] + [n for n in range(usable - usable % BOUNDARY, 0, -BOUNDARY) if n != usable]
    return [[n, bytes(states[32 * n:32 * n + 32]).hex()] for n in lengths[:MAX_CANDIDATES] if n > 0]


async def reusable_route(manager, rec: PrefixRecord, excluded: set[str]) -> bool:
    """Whether the record's hosters are all still online, serving those blocks and not banned."""
    try:
        servers = {a.peer_id: a for a in await manager.servers() if a.state == "online"}
    except Exception:
        return False
    for span in rec.route:
        a = servers.get(span.peer_id)
        if a is None or a.start > span.start or a.end < span.end or span.peer_id in excluded \
                or manager.bans.is_banned(span.peer_id):
            return False
    return True


@dataclass
class ReusePlan:
    record: PrefixRecord
    usable: int  # positions of the prompt the record holds (< the prompt's length)

    def offer(self, i: int) -> list[list]:
        return candidates(self.record.chain(i), self.usable)


async def plan_reuse(session) -> ReusePlan | None:
    """The remembered session to reuse for this one's prompt (on its route), or None."""
    store = getattr(session.manager, "prefix_store", None)
    tokens = session.prefix_tokens
    if store is None or not tokens:
        return None
    found = store.best(tokens, getattr(session, "adapter", None))
    if found is None:
        return None
    rec, common = found
    usable = min(common, len(tokens) - 1, session.max_length - 1)
    if usable < BOUNDARY or not await reusable_route(session.manager, rec, session.excluded):
        return None
    return ReusePlan(rec, usable)


def apply_reuse(session, plan: ReusePlan) -> None:
    """After the opens: start at the shortest hit over the route, with the record's histories."""
    hits = [st.stream.prefix_hit if st.stream is not None and st.open_error is None else 0 for st in session.spans]
    length = min(hits, default=0)
    if length <= 0:
        return
    rec = plan.record
    for i, st in enumerate(session.spans):
        st.server_pos = length  # a hoster that forked more crops at the first step
        st.history = rec.histories[i][:, :length].clone()
        st.check.stream, st.check.dtype = st.stream, st.history.dtype
        st.check.chain = bytearray(rec.chain(i)[:32 * (length + 1)])  # receipts continue this chain
        st.check.passed = rec.passed[i]  # checks this hoster already passed for this client
    session.position = session.reused = length
    session.manager.prefix_store.reused_positions += length


def remember(session, tokens: Sequence[int] | None) -> None:
    """At close: keep the session's histories if every span holds `tokens`' inputs first, in one row."""
    store = getattr(session.manager, "prefix_store", None)
    # `tokens` may be shorter than the session: speculative decoding's last step can leave rejected
    # drafts after them, which the record leaves out (the hosters' keys at boundaries below still match)
    n = len(tokens) if tokens is not None else 0
    if store is None or n > session.position or n < BOUNDARY:
        return
    for st in session.spans:
        if st.stream is None or st.stream.closed or st.open_error is not None or st.server_pos != session.position \
                or st.history is None or st.history.shape[0] != 1 or st.history.shape[1] < n:
            return
    store.save(tokens, session.route, [st.history[:, :n] for st in session.spans],
               [st.check.passed for st in session.spans], getattr(session, "adapter", None))
