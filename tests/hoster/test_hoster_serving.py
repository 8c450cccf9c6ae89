"""A real hoster on 127.0.0.1 called over hivemind P2P by a separate client peer."""

from __future__ import annotations

import asyncio
import time

import hoster_rpc as rh
import pytest
import torch
from hivemind.proto import runtime_pb2
from hivemind.utils import get_dht_time

from hoster.server import Hoster
from keys import NodeKey
from subnet.swarm import wire
from subnet.swarm.announcements import parse_entries, read_announcements, servers_key
from subnet.swarm.records import seal
from tests.reference import reference_layers
from tests.waiting import async_wait_until


@pytest.fixture(scope="module")
def llama_hoster(tiny_llama):
    h = Hoster(tiny_llama, start=2, end=6, cache_tokens=64, session_timeout=2.0, announce_period=1.0,
               announce_ttl=20.0, gather_window=0.02, progress=False).start()
    yield h
    h.shutdown()


@pytest.fixture(scope="module")
def qwen_hoster(tiny_qwen3, llama_hoster):
    h = Hoster(tiny_qwen3, start=3, end=8, cache_tokens=1000, initial_peers=llama_hoster.maddrs,
               progress=False, linear_kernel="blas").start()  # the OpenBLAS path serves too
    yield h
    h.shutdown()


@pytest.fixture(scope="module")
def client_dht(llama_hoster, client_dht_factory):
    return client_dht_factory(llama_hoster.maddrs)


connect = rh.connect


def _h(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def test_onednn_linears_are_the_default_and_another_kernel_can_be_chosen(llama_hoster, qwen_hoster):
    from torch import nn

    from subnet.model.kernels import BlasLinear, PackedLinear

    llama, qwen = list(llama_hoster.backend.span.modules()), list(qwen_hoster.backend.span.modules())
    assert any(isinstance(m, PackedLinear) for m in llama) and not any(isinstance(m, BlasLinear) for m in llama)
    assert any(isinstance(m, BlasLinear) for m in qwen) and not any(isinstance(m, PackedLinear) for m in qwen)
    assert not any(type(m) is nn.Linear for m in llama + qwen)


@pytest.mark.parametrize("which,k,n", [("llama", 2, 6), ("llama", 3, 5), ("qwen", 3, 8), ("qwen", 5, 7)])
async def test_forward_equals_local_model_layers(which, k, n, llama_hoster, qwen_hoster, client_dht):
    hoster = llama_hoster if which == "llama" else qwen_hoster
    ids = torch.randint(0, 200, (2, 9), generator=torch.Generator().manual_seed(k))
    h_in, h_out = reference_layers(hoster.model_path, None, k, n, ids)
    async with connect(client_dht) as p2p:
        out = await rh.forward(p2p, hoster.peer_id, hoster.model_uid, k, n, h_in)
    torch.testing.assert_close(out, h_out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("which", ["llama", "qwen"])
async def test_inference_steps_equal_full_sequence_with_rollback(which, llama_hoster, qwen_hoster, client_dht):
    hoster = llama_hoster if which == "llama" else qwen_hoster
    k, n = hoster.start_block, hoster.end_block
    ids = torch.randint(0, 200, (2, 10), generator=torch.Generator().manual_seed(7))
    h_in, h_out = reference_layers(hoster.model_path, None, k, n, ids)
    async with connect(client_dht) as p2p:
        s = rh.Stream(p2p, hoster.peer_id)
        await s.open(hoster.model_uid, k, n, max_length=16, batch_size=2)
        outs = [await s.step(h_in[:, :4], 0)] + [await s.step(h_in[:, t:t + 1], t) for t in range(4, 10)]
        torch.testing.assert_close(torch.cat(outs, 1), h_out, rtol=1e-5, atol=1e-5)
        replay = await s.step(h_in[:, 5:8], 5)  # start from an earlier position: rollback + replay
        torch.testing.assert_close(replay, h_out[:, 5:8], rtol=1e-5, atol=1e-5)
        assert (await s.step(h_in[:, 8:10], 8)).shape == (2, 2, 64)
        await s.close()


async def test_malformed_requests_get_typed_errors_and_hoster_keeps_serving(llama_hoster, client_dht):
    h = llama_hoster
    uid, peer = h.model_uid, h.peer_id
    good = _h(1, 3, 64)
    cases = [
        (rh.request("other-model", {"start": 2, "end": 6}, [good]), "unknown_model"),
        (rh.request(uid, {"start": 0, "end": 6}, [good]), "out_of_range"),
        (rh.request(uid, {"start": 2, "end": 9}, [good]), "out_of_range"),
        (rh.request(uid, {"start": 5, "end": 5}, [good]), "out_of_range"),
        (rh.request(uid, {"start": "2", "end": 6}, [good]), "bad_request"),
        (rh.request(uid, {"start": 2, "end": 6}, [_h(1, 3, 32)]), "bad_request"),  # wrong hidden size
        (rh.request(uid, {"start": 2, "end": 6}, [_h(3, 64)]), "bad_request"),  # wrong rank
        (rh.request(uid, {"start": 2, "end": 6}, [good, good]), "bad_request"),
        (rh.request(uid, {"start": 2, "end": 6}, [runtime_pb2.Tensor(buffer=b"\0" * 24, size=[1, 3, 1],
                                                                     dtype="int64")]), "bad_request"),
        (rh.request(uid, {"start": 2, "end": 6}, [runtime_pb2.Tensor(buffer=b"\0" * 10, size=[1, 3, 64],
                                                                     dtype="float32")]), "bad_request"),
        (rh.request(uid, {"start": 2, "end": 6}, [runtime_pb2.Tensor(buffer=b"", size=[4096, 4096, 64],
                                                                     dtype="float32")]), "too_large"),
        (rh.request(uid, {"start": 2, "end": 6}, [_h(2, 4097, 64)]), "too_large"),
        (runtime_pb2.ExpertRequest(uid=uid, metadata=b"{not json", tensors=[wire.encode_tensor(good)]), "bad_request"),
    ]
    async with connect(client_dht) as p2p:
        for req, kind in cases:
            resp = await rh.call(p2p, peer, "rpc_forward", req)
            assert wire.response_error(resp) is not None and wire.response_error(resp)[0] == kind, (req.metadata, kind)
            assert not resp.tensors

        # inference stream errors
        s = rh.Stream(p2p, peer)
        err = wire.response_error(await s.send(rh.request(meta={"position": 0}, tensors=[good])))
        assert err[0] == "unknown_session"
        await s.close()
        for meta, kind in [({"start": 1, "end": 6, "max_length": 8}, "out_of_range"),
                           ({"start": 2, "end": 6, "max_length": 10**6}, "too_large"),
                           ({"start": 2, "end": 6, "max_length": 8, "batch_size": 0}, "bad_request"),
                           ({"start": 2, "end": 6}, "bad_request")]:
            s = rh.Stream(p2p, peer)
            assert wire.response_error(await s.send(rh.request(uid, meta)))[0] == kind
            await s.close()

        s = rh.Stream(p2p, peer)
        await s.open(uid, 2, 6, max_length=8)
        for req, kind in [
            (rh.request(meta={"position": 0, "session_id": "nope"}, tensors=[good]), "unknown_session"),
            (rh.request(meta={"position": 0}, tensors=[_h(2, 3, 64)]), "bad_request"),  # batch size
            (rh.request(meta={"position": 0}, tensors=[_h(1, 3, 16)]), "bad_request"),  # hidden size
            (rh.request(meta={"position": 3}, tensors=[good]), "bad_request"),  # beyond cached length
            (rh.request(meta={"position": 0}, tensors=[_h(1, 9, 64)]), "bad_request"),  # beyond max_length
            (rh.request(meta={"position": 0}), "bad_request"),  # no tensor
        ]:
            assert wire.response_error(await s.send(req))[0] == kind
        # the same session still works after errors
        torch.testing.assert_close(await s.step(good, 0), h.run_span(good), rtol=1e-5, atol=1e-5)
        await s.close()
        # and so does everyone else
        torch.testing.assert_close(await rh.forward(p2p, peer, uid, 2, 6, good), h.run_span(good))
        assert (await rh.info(p2p, peer))["state"] == "online"


async def test_bfloat16_inputs_answer_in_input_dtype(llama_hoster, client_dht):
    x = _h(1, 3, 64, dtype=torch.bfloat16)
    async with connect(client_dht) as p2p:
        out = await rh.forward(p2p, llama_hoster.peer_id, llama_hoster.model_uid, 2, 6, x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, llama_hoster.run_span(x.float()).to(torch.bfloat16), rtol=2e-2, atol=2e-2)


async def test_full_cache_answers_busy(llama_hoster, client_dht):
    h = llama_hoster  # 64-token budget
    async with connect(client_dht) as p2p:
        s = rh.Stream(p2p, h.peer_id)
        assert wire.response_error(await s.send(rh.request(h.model_uid, {"start": 2, "end": 6, "max_length": 65})))[0] \
            == "busy"
        await s.close()
        a, b = rh.Stream(p2p, h.peer_id), rh.Stream(p2p, h.peer_id)
        await a.open(h.model_uid, 2, 6, max_length=60)
        await b.open(h.model_uid, 2, 6, max_length=60)
        await a.step(_h(1, 40, 64), 0)
        assert h.backend.budget.used_tokens == 40
        err = wire.response_error(await b.send(rh.request(meta={"position": 0}, tensors=[_h(1, 30, 64)])))
        assert err[0] == "busy" and "cache full" in err[1]
        assert (await rh.info(p2p, h.peer_id))["cache_tokens_free"] == 24
        await a.close()
        for _ in range(50):
            if h.backend.budget.used_tokens == 0:
                break
            await asyncio.sleep(0.05)
        assert h.backend.budget.used_tokens == 0  # closing a stream frees its tokens
        assert (await b.step(_h(1, 30, 64), 0)).shape == (1, 30, 64)
        await b.close()


async def test_idle_session_expires_and_frees_memory(llama_hoster, client_dht):
    h = llama_hoster  # session_timeout = 2 s
    async with connect(client_dht) as p2p:
        s = rh.Stream(p2p, h.peer_id)
        sid = await s.open(h.model_uid, 2, 6, max_length=32)
        await s.step(_h(1, 20, 64), 0)
        session = h.backend.sessions[sid]
        assert h.backend.budget.used_tokens == 20 and session.cache_bytes() > 0
        resp = await s.receive(timeout=10)
        assert wire.response_error(resp)[0] == "unknown_session"
        await async_wait_until(lambda: sid not in h.backend.sessions and h.backend.budget.used_tokens == 0
                               and session.cache_bytes() == 0, "the timed-out session's state and memory are freed")
        await s.close()


async def test_concurrent_sessions_over_rpc_are_batched(llama_hoster, client_dht):
    h = llama_hoster
    seqs = [_h(1, 6, 64, seed=i) for i in range(3)]
    refs = [h.run_span(x) for x in seqs]
    before = h.backend.batches_run
    async with connect(client_dht) as p2p:
        streams = [rh.Stream(p2p, h.peer_id) for _ in seqs]
        await asyncio.gather(*[s.open(h.model_uid, 2, 6, max_length=8) for s in streams])
        outs = await asyncio.gather(*[s.step(x[:, :2], 0) for s, x in zip(streams, seqs)])
        got = [[o] for o in outs]
        for t in range(2, 6):
            step = await asyncio.gather(*[s.step(x[:, t:t + 1], t) for s, x in zip(streams, seqs)])
            for g, o in zip(got, step):
                g.append(o)
        for s in streams:
            await s.close()
    for g, ref in zip(got, refs):
        torch.testing.assert_close(torch.cat(g, 1), ref, rtol=1e-5, atol=1e-5)
    print(f"\nbatched rounds: {h.backend.batches_run - before}")
    assert h.backend.batches_run > before


def test_announcement_appears_and_refreshes(llama_hoster, client_dht):
    h = llama_hoster
    anns = read_announcements(client_dht, h.model_uid)
    mine = [a for a in anns if a.peer_id == h.peer_id]
    assert len(mine) == 1
    a = mine[0]
    assert (a.start, a.end, a.num_blocks, a.hidden_size, a.dtype, a.state) == (2, 6, 8, 64, "float32", "online")
    assert a.throughput > 0 and a.cache_tokens_total == 64
    deadline = time.monotonic() + 30  # announce_period = 1 s; a loaded machine may delay a refresh
    while True:
        again = [x for x in read_announcements(client_dht, h.model_uid) if x.peer_id == h.peer_id]
        if again and again[0].expiration > a.expiration:
            break
        assert time.monotonic() < deadline, "the announcement was never refreshed"
        time.sleep(0.2)


def test_forged_announcements_are_ignored(llama_hoster, client_dht):
    h = llama_hoster
    other = NodeKey.generate()
    payload = dict(h.info())
    exp = get_dht_time() + 30
    # signed by another key but claiming the hoster's peer id, under the forger's own subkey
    client_dht.store(servers_key(h.model_uid), seal(other, "announce", payload), exp, subkey=other.peer_id)
    # a well-formed record of the other key for a bogus span is accepted (the reader is not dropping everything)
    honest = dict(payload, peer_id=other.peer_id, start=0, end=2)
    third = NodeKey.generate()
    client_dht.store(servers_key(h.model_uid), seal(third, "announce", dict(honest, peer_id=third.peer_id)), exp,
                     subkey=third.peer_id)
    anns = {a.peer_id: a for a in read_announcements(client_dht, h.model_uid)}
    assert other.peer_id not in anns
    assert anns[h.peer_id].start == 2 and third.peer_id in anns

    # under the hoster's subkey, signed by another key (checked on raw entries: a DHT store would clobber it)
    class Item:
        def __init__(self, value, expiration_time):
            self.value, self.expiration_time = value, expiration_time

    forged = {h.peer_id: Item(seal(other, "announce", dict(payload, start=0, end=8)), exp)}
    assert parse_entries(forged, h.model_uid) == []
    genuine = {h.peer_id: Item(seal(h.node_key, "announce", payload), exp)}
    assert [a.peer_id for a in parse_entries(genuine, h.model_uid)] == [h.peer_id]
    expired = {h.peer_id: Item(seal(h.node_key, "announce", payload), get_dht_time() - 1)}
    assert parse_entries(expired, h.model_uid) == []
    tampered = seal(h.node_key, "announce", payload).replace(b'"start":2', b'"start":0')
    assert parse_entries({h.peer_id: Item(tampered, exp)}, h.model_uid) == []


def test_dht_validator_rejects_subkey_forgery(client_dht_factory):
    """With AnnouncementValidator on honest peers, a forger cannot hide a hoster's announcement
    by storing a later-expiring record under its subkey (hivemind keeps the latest per subkey)."""
    from subnet.swarm.announcements import AnnouncementValidator

    honest = client_dht_factory([], record_validators=[AnnouncementValidator()])
    peers = [str(m) for m in honest.get_visible_maddrs()]
    forger = client_dht_factory(peers)  # runs no validator
    reader = client_dht_factory(peers, record_validators=[AnnouncementValidator()])
    h, other = NodeKey.generate(), NodeKey.generate()
    payload = {"peer_id": h.peer_id, "model": "forgery-test", "start": 2, "end": 6, "throughput": 1.0,
               "cache_tokens_free": 10, "cache_tokens_total": 10, "version": "x", "state": "online",
               "num_blocks": 8, "hidden_size": 64, "dtype": "float32"}
    key = servers_key("forgery-test")
    assert honest.store(key, seal(h, "announce", payload), get_dht_time() + 60, subkey=h.peer_id)
    forger.store(key, seal(other, "announce", dict(payload, start=0, end=8)), get_dht_time() + 300,
                 subkey=h.peer_id)
    # the honest peer refused the forged value; the reader drops it when the forger serves it
    anns = read_announcements(reader, "forgery-test")
    assert [(a.peer_id, a.start, a.end) for a in anns] == [(h.peer_id, 2, 6)]
    # expiration beyond the cap is refused too (a hoster could otherwise pin stale state)
    v = AnnouncementValidator()
    from hivemind.dht.validation import DHTRecord
    from hivemind.utils import MSGPackSerializer

    rec = DHTRecord(b"k", MSGPackSerializer.dumps(h.peer_id), MSGPackSerializer.dumps(seal(h, "announce", payload)),
                    get_dht_time() + 30)
    assert v.validate(rec)
    assert not v.validate(DHTRecord(rec.key, rec.subkey, rec.value, get_dht_time() + 10_000))
    assert not v.validate(DHTRecord(rec.key, MSGPackSerializer.dumps(other.peer_id), rec.value, rec.expiration_time))
    assert v.validate(DHTRecord(rec.key, rec.subkey, MSGPackSerializer.dumps(b"unrelated"), rec.expiration_time))


async def test_shutdown_withdraws_and_fails_sessions_cleanly(tiny_llama, client_dht_factory):
    h = Hoster(tiny_llama, start=0, end=4, cache_tokens=100, model_name="shutdown-test", progress=False).start()
    dht = client_dht_factory(h.maddrs)
    try:
        assert [a.peer_id for a in read_announcements(dht, "shutdown-test")] == [h.peer_id]
        async with connect(dht) as p2p:
            s = rh.Stream(p2p, h.peer_id)
            await s.open("shutdown-test", 0, 4, max_length=8)
            await s.step(_h(1, 2, 64), 0)
            await asyncio.get_running_loop().run_in_executor(None, h.shutdown)
            err = wire.response_error(await s.receive(timeout=10))
            assert err[0] == "busy" and "shutting down" in err[1]
            await s.close()
        assert read_announcements(dht, "shutdown-test") == []
        offline = read_announcements(dht, "shutdown-test", include_offline=True)
        assert [a.state for a in offline] == ["offline"]
    finally:
        h.shutdown()


def test_block_choice_and_rebalance_between_real_hosters(tiny_llama, client_dht_factory):
    """Without --blocks a hoster fills the uncovered range; a duplicate moves to a hole (drained first)."""
    a = Hoster(tiny_llama, num_blocks=4, model_name="rebalance-test", cache_tokens=100, throughput=50.0,
               progress=False).start()
    b = c = None
    try:
        assert (a.start_block, a.end_block) == (0, 4)
        b = Hoster(tiny_llama, num_blocks=4, model_name="rebalance-test", cache_tokens=100, throughput=50.0,
                   initial_peers=a.maddrs, progress=False).start()
        assert (b.start_block, b.end_block) == (4, 8)  # the weakest coverage was [4, 8)
        c = Hoster(tiny_llama, start=0, end=4, model_name="rebalance-test", cache_tokens=100, throughput=50.0,
                   initial_peers=a.maddrs, session_timeout=1.0, progress=False).start()
        assert c.maybe_rebalance() is None  # [0, 4) and [4, 8) both covered: moving gains nothing
        b.shutdown()  # a hole opens at [4, 8)
        dht = client_dht_factory(a.maddrs)
        assert c.maybe_rebalance() == (4, 8)
        assert (c.start_block, c.end_block) == (4, 8)
        x = torch.randn(1, 3, 64)
        anns = {ann.peer_id: ann for ann in read_announcements(dht, "rebalance-test")}
        assert (anns[c.peer_id].start, anns[c.peer_id].end, anns[c.peer_id].state) == (4, 8, "online")
        assert c.run_span(x).shape == (1, 3, 64)
    finally:
        for h in (a, b, c):
            if h is not None:
                h.shutdown()
