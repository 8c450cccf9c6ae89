"""Prefix reuse: a bounded LRU of recently closed sessions' KV, keyed by content the hoster hashed.

Hosters receive hidden states, not tokens, so a key a client claims (a token hash) would let
one client poison the cache for everyone. The key here is the *input chain* of the session
(`consensus.evidence`, the same chain step receipts sign): a running sha256 the hoster itself
computed over the input rows it actually received, one state per position. An entry is found
by `(start, end, L, c_L)`, indexed every `BOUNDARY` positions (and at its full length); a client
offers candidate `(L, c_L)` pairs computed from the inputs it would send, and the longest hit
is forked: the new session starts with a copy of the first `L` positions of the entry's KV
(the blocks are causal, so they are valid for any continuation) and only the rest is sent and
computed. Keys never cross models (one model per hoster), block ranges (in the key), dtypes,
hidden sizes or batch sizes (in the chain's seed).

Memory: an entry is charged to the hoster's `CacheBudget` like a session (its positions),
the cache as a whole never holds more than `max_fraction` of the budget, each client peer at
most `max_per_peer` entries (its own LRU), and entries are evicted first, least recently used,
whenever a session's open or step would not fit (`CacheBudget.reclaim`).

Also here: the compute-thread side of forks (`prepare`): a forked session's prefix is copied
at its first step, and a session of `batch_size > 1` whose rows are still identical keeps one
row ("narrow") until its first step with every row, which copies the row into all of them; so
`n` choices of one prompt prefill once (docs/PROTOCOL.md, "Prefix reuse").
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from hoster.cache import CacheBudget, SessionKV

BOUNDARY = 32  # positions between indexed chain states (clients offer candidates at these lengths)
MAX_CANDIDATES = 64  # candidate lengths one open request may offer
_ids = itertools.count()


class ForkError(ValueError):
    """A step does not fit a session's rows (protocol type `bad_request`)."""


@dataclass
class PrefixEntry:
    """A closed session's KV (one row) and the input chain it was computed from."""

    id: str
    peer: str
    start: int
    end: int
    kv: SessionKV  # never written again once cached: forks copy from it
    chain: bytes  # c_0..c_length, 32 bytes each
    dtype: torch.dtype  # of the inputs the chain was computed over
    keys: list[tuple] = field(default_factory=list)
    adapter: str | None = None  # the LoRA adapter the KV was computed with (hoster.adapters): part of every key

    @property
    def length(self) -> int:
        return self.kv.length

    def state(self, position: int) -> bytes:
        return self.chain[32 * position:32 * position + 32]


class PrefixCache:
    """Thread-safe: `put` runs on the compute thread, `lookup` on the event loop, `reclaim` on either."""

    def __init__(self, budget: CacheBudget | None, *, max_per_peer: int = 16, max_entries: int = 256,
                 max_fraction: float = 0.5, min_length: int = BOUNDARY):
        self.budget = budget
        self.max_per_peer, self.max_entries = max_per_peer, max_entries
        self.max_fraction, self.min_length = max_fraction, min_length
        self._entries: OrderedDict[str, PrefixEntry] = OrderedDict()  # least recently used first
        self._index: dict[tuple, PrefixEntry] = {}
        self._lock = threading.RLock()
        self.hits = self.misses = self.evictions = self.stored = 0
        self.reused_positions = 0  # positions forks did not have to compute

    @classmethod
    def attach(cls, budget: CacheBudget | None, **kwargs) -> PrefixCache | None:
        """The cache of a backend with this budget (None without one); it reclaims the budget first."""
        if budget is None:
            return None
        cache = cls(budget, **kwargs)
        budget.reclaim = cache.reclaim
        return cache

    def adopt(self, session) -> bool:
        """On the compute thread, when a session closes: keep its KV if the servicer asked (`keep`)."""
        keep = getattr(session, "keep", None)  # (peer, input chain, dtype), set by the servicer at close
        if keep is None or getattr(session, "fork", None) is not None:
            return False
        peer, chain, dtype = keep
        if not self.put(peer, session.start, session.end, session.cache, chain, dtype,
                        adapter=getattr(session, "adapter", None)):
            return False
        session.cache = SessionKV(session.start, session.end, 1, 1, session.cache.kv_heads, session.cache.head_dim,
                                  session.cache.dtype, session.cache.device)
        session.length = 0
        return True

    # ---------------------------------------------------------------- stats

    @property
    def entries(self) -> int:
        return len(self._entries)

    @property
    def tokens(self) -> int:
        with self._lock:
            return sum(e.length for e in self._entries.values())

    def stats(self) -> dict:
        return {"entries": self.entries, "tokens": self.tokens, "hits": self.hits, "misses": self.misses,
                "evictions": self.evictions, "stored": self.stored, "reused_positions": self.reused_positions}

    # ---------------------------------------------------------------- store

    def put(self, peer: str, start: int, end: int, kv: SessionKV, chain: bytes, dtype: torch.dtype,
            adapter: str | None = None) -> bool:
        """Keep a closed session's KV (one row only); False when it is not worth or cannot be kept.
        `adapter` scopes the entry: KV computed with a LoRA adapter differs from the base model's for
        the same inputs, so only sessions with the same adapter (or none, as here) may fork it."""
        length = min(kv.length, len(chain) // 32 - 1)
        if kv.batch_size != 1 or length < self.min_length:
            return False
        with self._lock:
            last = bytes(chain[32 * length:32 * length + 32])
            for old in self._entries.values():  # an entry already holding this whole prefix: keep that one
                if (old.start, old.end, old.adapter) == (start, end, adapter) and old.length >= length \
                        and old.state(length) == last:
                    self._entries.move_to_end(old.id)
                    return False
            kv.crop(length)
            entry = PrefixEntry(f"prefix:{next(_ids)}", peer, start, end, kv, bytes(chain[:32 * (length + 1)]), dtype,
                                adapter=adapter)
            for old in [e for e in self._entries.values() if (e.start, e.end, e.adapter) == (start, end, adapter)
                        and e.length <= length and entry.state(e.length) == e.state(e.length)]:
                self._evict(old)  # this one extends it (the next turn of a conversation): same KV and more
            mine = [e for e in self._entries.values() if e.peer == peer]
            for old in mine[:max(0, len(mine) + 1 - self.max_per_peer)]:
                self._evict(old)  # the peer's own least recently used entries
            if not self._charge(entry):
                return False
            entry.keys = [(start, end, adapter, n, entry.state(n)) for n in range(BOUNDARY, length, BOUNDARY)]
            entry.keys.append((start, end, adapter, length, entry.state(length)))
            for k in entry.keys:
                self._index[k] = entry
            self._entries[entry.id] = entry
            self.stored += 1
            return True

    def _charge(self, entry: PrefixEntry) -> bool:
        """Charge the entry to the budget, evicting least recently used entries to make room."""
        while len(self._entries) >= self.max_entries:
            self._evict(next(iter(self._entries.values())))
        if self.budget is None:
            return True
        cap = int(self.budget.total_tokens * self.max_fraction)
        if entry.length > cap:
            return False
        while self._entries and (self.tokens + entry.length > cap or self.budget.free_tokens < entry.length):
            self._evict(next(iter(self._entries.values())))
        if self.budget.free_tokens < entry.length:
            return False
        self.budget.open(entry.id, 1, entry.length)
        self.budget.resize(entry.id, entry.length)
        return True

    def _evict(self, entry: PrefixEntry) -> None:
        if self._entries.pop(entry.id, None) is None:
            return
        for k in entry.keys:
            if self._index.get(k) is entry:
                del self._index[k]
        if self.budget is not None:
            self.budget.close(entry.id)
        self.evictions += 1  # the KV tensors go with the last reference (a fork in progress keeps its own)

    def reclaim(self, tokens: int) -> bool:
        """Evict least recently used entries until `tokens` are free in the budget; whether any was evicted."""
        evicted = False
        with self._lock:
            while self._entries and (self.budget is None or self.budget.free_tokens < tokens):
                self._evict(next(iter(self._entries.values())))
                evicted = True
        return evicted

    def clear(self) -> None:
        with self._lock:
            for e in list(self._entries.values()):
                self._evict(e)

    # ---------------------------------------------------------------- lookup

    def lookup(self, start: int, end: int, candidates: list[tuple[int, bytes]],
               adapter: str | None = None) -> tuple[PrefixEntry, int] | None:
        """The entry holding the longest offered prefix `(L, c_L)` of blocks [start, end) computed with
        `adapter` (None: the base model), or None."""
        with self._lock:
            for length, state in sorted(candidates, key=lambda c: -c[0]):
                entry = self._index.get((start, end, adapter, length, state))
                if entry is not None:
                    self._entries.move_to_end(entry.id)
                    self.hits += 1
                    self.reused_positions += length
                    return entry, length
            self.misses += 1
            return None


def parse_candidates(raw: object) -> list[tuple[int, bytes]]:
    """The `prefix` field of an open request: `[[L, hex c_L], ...]` (bounded, validated)."""
    if not isinstance(raw, list) or len(raw) > MAX_CANDIDATES:
        raise ValueError(f"prefix must be a list of at most {MAX_CANDIDATES} [length, chain] pairs")
    out = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], int)
                and not isinstance(item[0], bool) and 0 < item[0] < 1 << 30 and isinstance(item[1], str)
                and len(item[1]) == 64):
            raise ValueError("each prefix candidate is [length > 0, 64 hex chars]")
        try:
            out.append((item[0], bytes.fromhex(item[1])))
        except ValueError:
            raise ValueError("prefix chain states are hex") from None
    return out


# -------------------------------------------------------------------- compute thread side of forks


def prepare(session, rows: int) -> None:
    """Before a step of `rows` rows: copy in a pending fork's prefix, widen a narrow session."""
    fork = getattr(session, "fork", None)
    if fork is not None:
        session.fork = None
        src, length = fork
        copy_prefix(src, session.cache, length)
    kv = session.cache
    if rows == kv.batch_size:
        return
    if kv.batch_size == 1 and rows == session.batch_size:
        widen(kv, rows)
        return
    raise ForkError(f"a step of {rows} rows in a session holding {kv.batch_size} "
                    f"(only the first steps of a batch-{session.batch_size} session may send one shared row)")


def copy_prefix(src: SessionKV, dst: SessionKV, length: int) -> None:
    """`dst` (empty) gets positions [0, length) of `src` (one row, broadcast to dst's rows)."""
    dst.reserve(length)
    for store_dst, store_src in ((dst.keys, src.keys), (dst.values, src.values)):
        for d, s in zip(store_dst, store_src):
            d[:, :, :length].copy_(s[:, :, :length].expand(dst.batch_size, -1, -1, -1))
    dst.length = length


def widen(kv: SessionKV, rows: int) -> None:
    """Make a one-row KV `rows` rows, each a copy of the one (n choices sharing one prefill)."""
    capacity, length = kv.capacity, kv.length
    kv.batch_size = rows
    if capacity == 0:
        return
    for store in (kv.keys, kv.values):
        for i, old in enumerate(store):
            new = torch.empty((rows, *old.shape[1:]), dtype=old.dtype, device=old.device)
            new[:, :, :length].copy_(old[:, :, :length].expand(rows, -1, -1, -1))
            store[i] = new


# -------------------------------------------------------------------- servicer side


def fork_open(backend, receipts, session, meta: dict) -> dict:
    """At open: fork the longest cached prefix the request offers (`prefix`); the reply fields.

    Needs the receipt book: the forked session's receipts continue the entry's input chain."""
    if "prefix" not in meta:
        return {}
    try:
        candidates = parse_candidates(meta["prefix"])
    except ValueError as e:
        raise ForkError(str(e)) from None
    cache = getattr(backend, "prefix", None)
    found = cache.lookup(session.start, session.end, candidates, getattr(session, "adapter", None)) \
        if cache is not None and receipts else None
    if found is None:
        return {"prefix_hit": 0}
    entry, length = found
    length = min(length, session.max_length - 1)
    session.fork, session.length = (entry.kv, length), length
    receipts.seed(session.id, entry.dtype, entry.chain[:32 * (length + 1)])
    return {"prefix_hit": length}


def keep_on_close(backend, receipts, session, peer: str) -> None:
    """At close: offer the session's KV to the prefix cache, keyed by the input chain the receipts hashed."""
    if getattr(backend, "prefix", None) is None or receipts is None:
        return
    chain = receipts.chain(session.id)
    if chain is not None:
        session.keep = (peer, chain[1], chain[0])
