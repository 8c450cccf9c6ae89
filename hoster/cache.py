"""KV cache accounting under a token budget, and the in-place KV store sessions keep.

One "token" is the K and V of one position of one sequence over all served blocks.
Sessions are charged for the positions they actually hold, as they grow (not their
max_length up front, unlike Petals); a step that would exceed the budget is refused
with `busy`. Rolling back (a step from an earlier position) releases tokens.
Thread-safe: the event loop admits sessions, the compute thread charges growth.
"""

from __future__ import annotations

import threading

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DummyLayer


class CacheFull(Exception):
    """The budget cannot admit the requested tokens (protocol error type `busy`)."""


class CacheBudget:
    def __init__(self, total_tokens: int):
        if total_tokens <= 0:
            raise ValueError("cache budget must be positive")
        self.total_tokens = int(total_tokens)
        self._used: dict[str, int] = {}
        self._lock = threading.Lock()
        # called (outside the lock) with the tokens a refused open/resize needs free; True when it
        # freed something (hoster.prefix_cache evicts cached prefixes first), then the call is retried
        self.reclaim = None

    @classmethod
    def from_bytes(cls, budget_bytes: int, bytes_per_token: int) -> CacheBudget:
        return cls(max(1, budget_bytes // max(1, bytes_per_token)))

    @property
    def used_tokens(self) -> int:
        with self._lock:
            return sum(self._used.values())

    @property
    def free_tokens(self) -> int:
        return self.total_tokens - self.used_tokens

    @property
    def sessions(self) -> int:
        with self._lock:
            return len(self._used)

    def open(self, session_id: str, batch_size: int, max_length: int) -> None:
        """Admit a session: it must be able to ever fit, and at least one position must fit now."""
        try:
            self._open(session_id, batch_size, max_length)
        except CacheFull:
            if self.reclaim is None or batch_size * max_length > self.total_tokens or not self.reclaim(batch_size):
                raise
            self._open(session_id, batch_size, max_length)

    def _open(self, session_id: str, batch_size: int, max_length: int) -> None:
        need_max = batch_size * max_length
        with self._lock:
            if session_id in self._used:
                raise ValueError(f"session {session_id} already open")
            if need_max > self.total_tokens:
                raise CacheFull(f"batch_size*max_length={need_max} exceeds this hoster's whole cache "
                                f"({self.total_tokens} tokens)")
            free = self.total_tokens - sum(self._used.values())
            if batch_size > free:
                raise CacheFull(f"cache full: {free} of {self.total_tokens} tokens free")
            self._used[session_id] = 0

    def resize(self, session_id: str, tokens: int) -> None:
        """Set the session's charge to `tokens` (grow or shrink); CacheFull if growth does not fit."""
        try:
            self._resize(session_id, tokens)
        except CacheFull:
            if self.reclaim is None or not self.reclaim(tokens - self.usage(session_id)):
                raise
            self._resize(session_id, tokens)

    def _resize(self, session_id: str, tokens: int) -> None:
        with self._lock:
            current = self._used[session_id]
            if tokens > current:
                free = self.total_tokens - sum(self._used.values())
                if tokens - current > free:
                    raise CacheFull(f"cache full: session needs {tokens - current} more tokens, {free} free")
            self._used[session_id] = tokens

    def usage(self, session_id: str) -> int:
        with self._lock:
            return self._used.get(session_id, 0)

    def close(self, session_id: str) -> None:
        with self._lock:
            self._used.pop(session_id, None)


# ----------------------------------------------------------------------------- KV store


def _grown_capacity(capacity: int, needed: int, max_length: int) -> int:
    """Next capacity: at least `needed`, at least +1/8 (amortized O(1) copies per position),
    rounded up to 16 positions, never beyond `max_length`.

    The slack stays small because the budget charges positions, not capacity: a hoster holds
    at most max(1/8, 16 positions) more than it charges per session (and untouched pages of a
    fresh large allocation are not even resident).
    """
    target = max(needed, capacity + capacity // 8)
    target = -(-target // 16) * 16
    return max(needed, min(target, max_length))


class SessionKV:
    """One session's K/V for layers [start, end): one buffer per layer, written in place.

    Buffers are `[batch, kv_heads, capacity, head_dim]`; positions [0, length) are valid.
    A step writes its new positions at [length, length + n) of every layer and attention
    reads the view [:, :, :length + n]: no per-step concatenation (transformers'
    DynamicLayer reallocates and copies the whole past every step). Capacity grows by
    `_grown_capacity`, so the past is copied only every so often. Touched only by the
    compute thread.
    """

    def __init__(self, start: int, end: int, batch_size: int, max_length: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        self.start, self.end = start, end
        self.batch_size, self.max_length = batch_size, max_length
        self.kv_heads, self.head_dim = kv_heads, head_dim
        self.dtype, self.device = dtype, device
        self.keys: list[torch.Tensor | None] = [None] * (end - start)
        self.values: list[torch.Tensor | None] = [None] * (end - start)
        self.capacity = 0
        self.length = 0  # committed positions

    def reserve(self, needed: int) -> None:
        """Make room for `needed` positions in every layer (before a step runs)."""
        if needed > self.max_length:
            raise ValueError(f"{needed} positions exceed max_length {self.max_length}")
        if needed <= self.capacity:
            return
        self._reallocate(_grown_capacity(self.capacity, needed, self.max_length))

    def crop(self, length: int) -> None:
        """Forget positions >= `length` (rollback); gives memory back when less than half is used."""
        self.length = min(self.length, length)
        if self.capacity > 64 and self.length < self.capacity // 2:
            self._reallocate(_grown_capacity(0, max(self.length, 1), self.max_length))

    def clear(self) -> None:
        self.keys = [None] * (self.end - self.start)
        self.values = [None] * (self.end - self.start)
        self.capacity = self.length = 0

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store a step's new K/V of global layer `layer` after the committed positions; return the views
        of everything attention must see (committed + new)."""
        i, n = layer - self.start, keys.shape[-2]
        stop = self.length + n
        if stop > self.capacity:  # callers reserve first; stay correct without it
            self.reserve(stop)
        k, v = self.keys[i], self.values[i]
        k[:, :, self.length:stop].copy_(keys)
        v[:, :, self.length:stop].copy_(values)
        return k[:, :, :stop], v[:, :, :stop]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)

    def _reallocate(self, capacity: int) -> None:
        """New buffers of `capacity` positions, the committed ones copied. Always ordinary tensors, even
        when called inside inference mode: a compiled step's graph (hoster.compiled) guards on the
        buffers' dispatch keys, and a buffer grown in inference mode would miss it every step."""
        shape = (self.batch_size, self.kv_heads, capacity, self.head_dim)
        keep = min(self.length, capacity)
        with torch.inference_mode(False):
            for store in (self.keys, self.values):
                for i, old in enumerate(store):
                    new = torch.empty(shape, dtype=self.dtype, device=self.device)
                    if old is not None and keep:
                        new[:, :, :keep].copy_(old[:, :, :keep])
                    store[i] = new
                    del old  # one layer at a time: the peak is one layer's old + new buffers
        self.capacity = capacity


class _InPlaceLayer(CacheLayerMixin):
    """A transformers cache layer whose storage lives elsewhere (already "initialized")."""

    is_sliding = False  # every layer keeps its full history (the sliding mask limits attention)

    def __init__(self, layer: int):
        super().__init__()
        self.layer = layer
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states) -> None:
        pass


class _KVLayer(_InPlaceLayer):
    """transformers' view of one layer of a `SessionKV`: `update` writes in place."""

    is_croppable = True

    def __init__(self, kv: SessionKV, layer: int):
        super().__init__(layer)
        self.kv = kv

    def update(self, key_states, value_states, *args, **kwargs):
        return self.kv.write(self.layer, key_states, value_states)

    def get_seq_length(self) -> int:
        return self.kv.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.kv.length + query_length, 0

    def get_max_length(self) -> int:
        return self.kv.max_length

    def crop(self, tokens_to_remove: int) -> None:
        pass  # the length is shared by all layers: `KVCache.crop` crops the SessionKV once


class KVCache(Cache):
    """A transformers `Cache` over a `SessionKV` (global layer indices; layers before the span are dummies)."""

    def __init__(self, kv: SessionKV):
        super().__init__(layers=[DummyLayer() for _ in range(kv.start)]
                         + [_KVLayer(kv, i) for i in range(kv.start, kv.end)])
        self.kv = kv

    def crop(self, tokens_to_remove: int) -> None:
        """transformers' semantics: remove the last `-tokens_to_remove` positions."""
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of positions to remove")
        self.kv.crop(self.kv.length + tokens_to_remove)


class Rows:
    """K or V of several sessions' steps computed as one batch: one view per session (its rows).

    Returned by `RowsCache.update` instead of one padded tensor; `rows_attention` runs attention
    per session on these views, so no session's past is ever copied into a batch tensor.
    """

    def __init__(self, parts: list[torch.Tensor], mask_free: bool):
        self.parts = parts
        self.mask_free = mask_free  # every row sees all its keys (one-position steps, full attention)


class _RowsLayer(_InPlaceLayer):
    is_croppable = False

    def __init__(self, cache: RowsCache, layer: int):
        super().__init__(layer)
        self.cache = cache

    def update(self, key_states, value_states, *args, **kwargs):
        ks, vs, r = [], [], 0
        for kv in self.cache.kvs:
            b = kv.batch_size
            k, v = kv.write(self.layer, key_states[r:r + b], value_states[r:r + b])
            ks.append(k)
            vs.append(v)
            r += b
        return Rows(ks, self.cache.mask_free), Rows(vs, self.cache.mask_free)

    def get_seq_length(self) -> int:
        return self.cache.past

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.cache.past + query_length, 0

    def get_max_length(self) -> int:
        return -1


class RowsCache(Cache):
    """Several sessions' `SessionKV`s seen as one left-padded batch of `past` = longest past positions.

    Masks are built by transformers for that padded batch (2-D padding mask + per-row position
    ids); `rows_attention` slices each session's part of the mask (its last length + n columns).
    """

    def __init__(self, kvs: list[SessionKV], start: int, end: int, mask_free: bool):
        super().__init__(layers=[DummyLayer() for _ in range(start)] + [_RowsLayer(self, i) for i in range(start, end)])
        self.kvs = kvs
        self.past = max(kv.length for kv in kvs)
        self.mask_free = mask_free


def rows_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                   **kwargs):
    """sdpa attention that also accepts `Rows` (per-session K/V views of a batched step).

    For `Rows`, torch's sdpa runs once per session on its own views (transformers' wrapper costs
    ~40% more per call, which adds up over rows x layers on every decode step).
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not isinstance(key, Rows):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    n, heads = query.shape[2], query.shape[1]
    outs, r = [], 0
    for k, v in zip(key.parts, value.parts):
        b = k.shape[0]
        mask = None
        if attention_mask is not None and not key.mask_free:
            mask = attention_mask[r:r + b, :, :, attention_mask.shape[-1] - k.shape[-2]:]
        outs.append(sdpa(query[r:r + b], k, v, attn_mask=mask, dropout_p=dropout, scale=scaling,
                         is_causal=mask is None and n > 1 and k.shape[-2] == n, enable_gqa=k.shape[1] != heads))
        r += b
    return torch.cat(outs, 0).transpose(1, 2).contiguous(), None


ROWS_ATTENTION = "mesh_rows_sdpa"


def enable_rows_attention(config) -> bool:
    """Make `config`'s layers use `rows_attention` (same results as sdpa for ordinary caches).

    Only over sdpa, the implementation `subnet.model.blocks.load_config` sets; returns whether it is active.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if config._attn_implementation == ROWS_ATTENTION:
        return True
    if config._attn_implementation != "sdpa":
        return False
    AttentionInterface.register(ROWS_ATTENTION, rows_attention)
    AttentionMaskInterface.register(ROWS_ATTENTION, sdpa_mask)
    config._attn_implementation = ROWS_ATTENTION
    return True
