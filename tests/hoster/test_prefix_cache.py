"""The prefix cache's bookkeeping (hoster.prefix_cache) and the client's record store
(subnet.client.prefix), in process: content keys, longest hit, LRU per peer and overall, the
budget share, eviction under pressure, forks and widened rows copying the right KV."""

from __future__ import annotations

import pytest
import torch

from consensus.evidence import chain_seed, extend_chain
from hoster.cache import CacheBudget, CacheFull, SessionKV
from hoster.prefix_cache import BOUNDARY, PrefixCache, copy_prefix, parse_candidates, widen
from subnet.client.prefix import PrefixStore, candidates
from subnet.client.routing import Span


def _kv(length: int, seed: int = 0, batch: int = 1) -> SessionKV:
    kv = SessionKV(0, 2, batch, 512, 2, 4, torch.float32, torch.device("cpu"))
    kv.reserve(length)
    g = torch.Generator().manual_seed(seed)
    for store in (kv.keys, kv.values):
        for t in store:
            t.copy_(torch.randn(t.shape, generator=g))
    kv.length = length
    return kv


def _chain(x: torch.Tensor) -> bytes:
    states = bytearray(chain_seed(x.dtype, 1, x.shape[2]))
    extend_chain(states, x, 0)
    return bytes(states)


def _x(n: int, seed: int) -> torch.Tensor:
    return torch.randn(1, n, 8, generator=torch.Generator().manual_seed(seed))


def _offer(x: torch.Tensor, lengths) -> list[tuple[int, bytes]]:
    c = _chain(x)
    return [(n, c[32 * n:32 * n + 32]) for n in lengths]


def test_longest_offered_boundary_hits_and_keys_are_content_and_span():
    cache = PrefixCache(CacheBudget(10_000))
    x = _x(100, 1)
    assert cache.put("peer-a", 0, 2, _kv(100), _chain(x), torch.float32)
    entry, n = cache.lookup(0, 2, _offer(x, [32, 64, 96, 100]))
    assert n == 100 and entry.length == 100  # the full length is indexed too
    assert cache.lookup(0, 2, _offer(x, [90])) is None  # only boundaries and the full length are indexed
    assert cache.lookup(0, 2, _offer(x, [70, 64]))[1] == 64
    assert cache.lookup(0, 3, _offer(x, [64])) is None  # another block range
    y = x.clone()
    y[:, 40] += 1  # other inputs from position 40 on
    assert cache.lookup(0, 2, _offer(y, [96, 64])) is None
    assert cache.lookup(0, 2, _offer(y, [32]))[1] == 32  # rows before 40 are the same inputs
    assert cache.hits == 3 and cache.misses == 3


def test_short_or_multi_row_sessions_are_not_kept_and_extensions_replace_their_prefix():
    budget = CacheBudget(10_000)
    cache = PrefixCache(budget)
    assert not cache.put("p", 0, 2, _kv(BOUNDARY - 1), _chain(_x(BOUNDARY - 1, 0)), torch.float32)
    assert not cache.put("p", 0, 2, _kv(64, batch=2), _chain(_x(64, 0)), torch.float32)
    x = _x(200, 2)
    assert cache.put("p", 0, 2, _kv(80), _chain(x[:, :80]), torch.float32)
    assert cache.put("q", 0, 2, _kv(150), _chain(x[:, :150]), torch.float32)  # the next turn
    assert cache.entries == 1 and budget.used_tokens == 150  # the turn it extends is gone
    assert not cache.put("r", 0, 2, _kv(120), _chain(x[:, :120]), torch.float32)  # already held
    assert cache.lookup(0, 2, _offer(x, [64]))[0].length == 150


def test_per_peer_lru_and_budget_share():
    budget = CacheBudget(1000)
    cache = PrefixCache(budget, max_per_peer=2, max_fraction=0.5)
    for i in range(3):
        assert cache.put("a", 0, 2, _kv(100), _chain(_x(100, 10 + i)), torch.float32)
    assert cache.entries == 2  # peer a's oldest went
    assert cache.lookup(0, 2, _offer(_x(100, 10), [96])) is None
    assert cache.put("b", 0, 2, _kv(200), _chain(_x(200, 20)), torch.float32)
    assert cache.tokens <= 500 and budget.used_tokens == cache.tokens  # at most half the budget
    assert not cache.put("b", 0, 2, _kv(501), _chain(_x(501, 21)), torch.float32)  # larger than the share


def test_sessions_evict_cached_prefixes_first():
    budget = CacheBudget(1000)
    cache = PrefixCache.attach(budget, max_fraction=0.5)
    for i in range(5):
        cache.put(f"p{i}", 0, 2, _kv(100), _chain(_x(100, 30 + i)), torch.float32)
    assert cache.tokens == 500
    budget.open("s", 1, 900)
    budget.resize("s", 900)  # does not fit next to the cache: least recently used entries go first
    assert budget.used_tokens <= 1000 and cache.entries == 1 and cache.evictions == 4
    with pytest.raises(CacheFull):
        budget.resize("s", 1001)


def test_fork_copies_the_prefix_and_widen_copies_the_row():
    src = _kv(50, seed=3)
    dst = SessionKV(0, 2, 1, 512, 2, 4, torch.float32, torch.device("cpu"))
    copy_prefix(src, dst, 40)
    assert dst.length == 40
    torch.testing.assert_close(dst.keys[1][:, :, :40], src.keys[1][:, :, :40])
    widen(dst, 3)
    assert dst.batch_size == 3 and dst.keys[0].shape[0] == 3
    for r in range(3):
        torch.testing.assert_close(dst.values[0][r, :, :40], src.values[0][0, :, :40])


def test_candidates_are_validated():
    assert parse_candidates([[32, "ab" * 32]]) == [(32, bytes.fromhex("ab" * 32))]
    for bad in ([[0, "ab" * 32]], [[32, "ab"]], [[True, "ab" * 32]], "x", [[32, "zz" * 32]], [[1, "ab" * 32]] * 65):
        with pytest.raises(ValueError):
            parse_candidates(bad)


def test_client_store_finds_the_longest_common_prefix_and_offers_boundaries():
    store = PrefixStore(max_records=2)
    route = [Span("peer", 0, 8)]
    store.save(list(range(100)), route, [_x(100, 1)], [1])
    store.save(list(range(10)), route, [_x(10, 2)], [0])  # too short to be worth it: not kept
    assert store.best(list(range(70)) + [999])[1] == 70
    assert store.best([5] * 100) is None
    store.save(list(range(150)), route, [_x(150, 3)], [1])  # extends the first: replaces it
    store.save([7] * 64, route, [_x(64, 4)], [1])
    rec, n = store.best(list(range(120)))
    assert n == 120 and len(rec.tokens) == 150
    offer = candidates(rec.chain(0), 120)
    assert [c[0] for c in offer] == [120, 96, 64, 32]
    assert offer[1][1] == _chain(_x(150, 3))[32 * 96:32 * 97].hex()


def test_entries_are_scoped_by_lora_adapter():
    """KV computed with a LoRA adapter differs from the base model's for the same inputs: a session
    reuses only a prefix computed with its own adapter (or with none, when it has none)."""
    cache = PrefixCache(CacheBudget(10_000))
    x = _x(64, 1)
    assert cache.put("peer-a", 0, 2, _kv(64, 1), _chain(x), torch.float32, adapter="lora-a")
    assert cache.lookup(0, 2, _offer(x, [64, 32])) is None  # base model
    assert cache.lookup(0, 2, _offer(x, [64]), "lora-b") is None
    assert cache.lookup(0, 2, _offer(x, [64]), "lora-a")[1] == 64
    assert cache.put("peer-a", 0, 2, _kv(64, 2), _chain(x), torch.float32)  # the same inputs, base model: its own entry
    assert cache.entries == 2 and cache.lookup(0, 2, _offer(x, [64]))[0].adapter is None

    store = PrefixStore()
    route = [Span("peer", 0, 8)]
    store.save(list(range(64)), route, [_x(64, 1)], [1], adapter="lora-a")
    assert store.best(list(range(64))) is None
    assert store.best(list(range(64)), "lora-a")[1] == 64


def test_a_session_with_a_rejected_tail_is_remembered_up_to_its_valid_tokens():
    """Speculative decoding's last step can leave rejected drafts in the session after the tokens
    the loop kept: the record holds the kept tokens' inputs (it used to be dropped altogether)."""
    from types import SimpleNamespace

    from subnet.client.prefix import remember
    from subnet.client.span_state import SpanState

    store = PrefixStore()
    history = _x(80, 5)
    stream = SimpleNamespace(closed=False)
    st = SpanState(Span("peer", 0, 8), history=history, server_pos=80, stream=stream)
    session = SimpleNamespace(manager=SimpleNamespace(prefix_store=store), position=80, spans=[st],
                              route=[st.span], adapter=None)
    remember(session, list(range(70)))  # 70 valid tokens, 10 rejected drafts after them
    rec, n = store.best(list(range(70)))
    assert n == 70 and len(rec.tokens) == 70 and torch.equal(rec.histories[0], history[:, :70])
    remember(session, list(range(81)))  # more tokens than the session holds: not a record of it
    assert store.best([5] + list(range(80))) is None and len(store.best(list(range(81)))[0].tokens) == 70
