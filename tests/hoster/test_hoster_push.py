"""Hoster-to-hoster forwarding (`push_to` / `await_push` / `rpc_push`) between two real hosters."""

from __future__ import annotations

import asyncio
import time

import hoster_rpc as rh
import pytest
import torch
from hivemind.p2p import P2P, PeerID
from hivemind.proto import runtime_pb2

from hoster.server import Hoster
from keys import NodeKey
from subnet.swarm import wire
from tests.reference import reference_layers


@pytest.fixture(scope="module")
def first(tiny_llama):
    h = Hoster(tiny_llama, start=0, end=4, cache_tokens=256, progress=False).start()
    yield h
    h.shutdown()


@pytest.fixture(scope="module")
def second(tiny_llama, first):
    h = Hoster(tiny_llama, start=4, end=8, cache_tokens=256, initial_peers=first.maddrs, progress=False).start()
    yield h
    h.shutdown()


@pytest.fixture(scope="module")
def client_dht(first, second, client_dht_factory):
    return client_dht_factory(first.maddrs)


connect = rh.connect


async def _open(p2p, hoster, max_length=32) -> tuple[rh.Stream, str]:
    s = rh.Stream(p2p, hoster.peer_id)
    sid = await s.open(hoster.model_uid, hoster.start_block, hoster.end_block, max_length=max_length)
    return s, sid


def _send(s: rh.Stream, meta: dict, tensors=()) -> None:
    s.queue.put_nowait(rh.request(meta=meta, tensors=tensors))


async def test_pushed_chain_equals_the_model_and_returns_every_output(first, second, client_dht):
    ids = torch.randint(0, 200, (1, 9), generator=torch.Generator().manual_seed(3))
    h_in, mid = reference_layers(first.model_path, None, 0, 4, ids)
    _, h_out = reference_layers(first.model_path, None, 0, 8, ids)
    async with connect(client_dht) as p2p:
        a, _ = await _open(p2p, first)
        b, sid_b = await _open(p2p, second)
        outs = []
        for step, (pos, n) in enumerate([(0, 5), (5, 1), (6, 1), (7, 2)]):
            _send(a, {"position": pos, "step_id": step, "push_to": {"peer": second.peer_id, "session_id": sid_b}},
                  [h_in[:, pos:pos + n]])
            _send(b, {"position": pos, "step_id": step,
                      "await_push": {"from": first.peer_id, "length": n, "timeout": 20}})
            meta_a, (out_a,) = rh.unpack(await a.receive())
            meta_b, (out_b,) = rh.unpack(await b.receive())
            assert "push_error" not in meta_a and meta_b["position"] == pos + n
            torch.testing.assert_close(out_a, mid[:, pos:pos + n], rtol=1e-5, atol=1e-5)
            outs.append(out_b)
        torch.testing.assert_close(torch.cat(outs, 1), h_out, rtol=1e-5, atol=1e-5)
        await a.close()
        await b.close()


async def test_early_push_is_kept_and_only_the_named_sender_counts(second, client_dht):
    """The client itself pushes (it is the named sender), before its step request arrives."""
    x = torch.randn(1, 3, 64, generator=torch.Generator().manual_seed(5))
    async with connect(client_dht) as p2p:
        me = p2p.peer_id.to_base58()
        b, sid_b = await _open(p2p, second)
        direct, _ = await _open(p2p, second)
        _send(direct, {"position": 0}, [x])
        expected = rh.unpack(await direct.receive())[1][0]

        _, _, writer = await p2p.call_binary_stream_handler(PeerID.from_base58(second.peer_id),
                                                              rh.handle("rpc_push"))
        push = rh.request(meta={"session_id": sid_b, "step_id": 7}, tensors=[x])
        await P2P.send_protobuf(push, writer)
        await asyncio.sleep(0.5)  # the push is there before the step that needs it
        _send(b, {"position": 0, "step_id": 7, "await_push": {"from": me, "length": 3, "timeout": 10}})
        torch.testing.assert_close(rh.unpack(await b.receive())[1][0], expected)

        # a step naming another sender does not take the client's push: it times out, typed
        rejected = second.servicer.inbox.rejected
        await P2P.send_protobuf(rh.request(meta={"session_id": sid_b, "step_id": 8}, tensors=[x]), writer)
        other = NodeKey.generate().peer_id
        _send(b, {"position": 3, "step_id": 8, "await_push": {"from": other, "length": 3, "timeout": 1}})
        with pytest.raises(rh.RemoteError) as e:
            rh.unpack(await b.receive())
        assert e.value.type == "push_missing"
        assert second.servicer.inbox.rejected > rejected
        # a push into a session that does not exist is dropped; the hoster keeps serving
        await P2P.send_protobuf(rh.request(meta={"session_id": "nope", "step_id": 1}, tensors=[x]), writer)
        _send(b, {"position": 3}, [x])
        assert rh.unpack(await b.receive())[0]["position"] == 6
        writer.close()
        for s in (b, direct):
            await s.close()


async def test_next_request_interrupts_a_step_waiting_for_its_push(second, client_dht):
    x = torch.randn(1, 2, 64, generator=torch.Generator().manual_seed(6))
    async with connect(client_dht) as p2p:
        b, _ = await _open(p2p, second)
        _send(b, {"position": 0, "step_id": 1, "await_push": {"from": NodeKey.generate().peer_id, "length": 2,
                                                                 "timeout": 60}})
        t0 = time.monotonic()
        _send(b, {"position": 0}, [x])  # the client gave up on the push and sends the input itself
        with pytest.raises(rh.RemoteError) as e:
            rh.unpack(await b.receive())
        assert e.value.type == "push_missing"
        meta, (out,) = rh.unpack(await b.receive())
        assert meta["position"] == 2 and out.shape == (1, 2, 64)
        assert time.monotonic() - t0 < 10
        await b.close()


async def test_unreachable_push_target_is_reported_with_the_output(first, client_dht):
    x = torch.randn(1, 2, 64, generator=torch.Generator().manual_seed(8))
    async with connect(client_dht) as p2p:
        a, _ = await _open(p2p, first)
        nowhere = NodeKey.generate().peer_id
        _send(a, {"position": 0, "step_id": 1, "push_to": {"peer": nowhere, "session_id": "x"}}, [x])
        meta, (out,) = rh.unpack(await a.receive(timeout=60))
        assert meta["push_error"] and out.shape == (1, 2, 64)
        _send(a, {"position": 0, "step_id": 2, "push_to": "not an object"}, [x])
        assert "push_error" in rh.unpack(await a.receive())[0]
        # malformed await_push specs are typed errors
        for bad in ({"from": 5, "length": 1, "timeout": 1}, "x", {"from": "p", "length": 0, "timeout": 1}):
            _send(a, {"position": 0, "step_id": 3, "await_push": bad})
            with pytest.raises(rh.RemoteError) as e:
                rh.unpack(await a.receive())
            assert e.value.type in ("bad_request", "push_missing")
        await a.close()


def test_push_messages_are_plain_protobuf():
    """What a pusher writes is an ExpertRequest with JSON metadata and one checked tensor."""
    msg = rh.request(meta={"session_id": "s", "step_id": 1}, tensors=[torch.zeros(1, 1, 4)])
    again = runtime_pb2.ExpertRequest.FromString(msg.SerializeToString())
    assert wire.decode_metadata(again.metadata) == {"session_id": "s", "step_id": 1}
    assert wire.decode_tensor(again.tensors[0], shape=[1, None, 4]).shape == (1, 1, 4)


async def test_push_frames_are_bounded_before_reading():
    from hoster.push import read_frame

    ok = rh.request(meta={"session_id": "s", "step_id": 1}).SerializeToString()
    reader = asyncio.StreamReader()
    reader.feed_data(P2P.MESSAGE_MARKER + len(ok).to_bytes(P2P.HEADER_LEN, P2P.BYTEORDER) + ok)
    reader.feed_data(P2P.MESSAGE_MARKER + (1 << 40).to_bytes(P2P.HEADER_LEN, P2P.BYTEORDER))
    reader.feed_eof()
    assert wire.decode_metadata((await read_frame(reader, 1 << 20)).metadata)["step_id"] == 1
    with pytest.raises(ValueError, match="exceeds"):
        await read_frame(reader, 1 << 20)  # refused from the header alone, nothing buffered
    empty = asyncio.StreamReader()
    empty.feed_eof()
    assert await read_frame(empty, 1 << 20) is None


async def test_oversized_push_drops_only_that_stream(second, client_dht):
    x = torch.randn(1, 1, 64)
    async with connect(client_dht) as p2p:
        _, reader, writer = await p2p.call_binary_stream_handler(PeerID.from_base58(second.peer_id),
                                                                  rh.handle("rpc_push"))
        writer.write(P2P.MESSAGE_MARKER + (1 << 40).to_bytes(P2P.HEADER_LEN, P2P.BYTEORDER))
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # the hoster closed the stream
        b, _ = await _open(p2p, second)
        _send(b, {"position": 0}, [x])
        assert rh.unpack(await b.receive())[0]["position"] == 1
        await b.close()


async def test_the_push_leaves_before_the_receipt_is_signed(first, second, client_dht, monkeypatch):
    """The next hoster waits for the push; nobody waits for the receipt (it rides on the reply to the
    client). Signing first put the receipt's hashing (~1 ms for a 512-position prefill of model a)
    on every pushing hop's critical path."""
    order: list[str] = []
    channels, receipts = first.servicer.channels, first.servicer.receipts
    push, sign = channels.push, receipts.sign

    async def recorded_push(*args, **kwargs):
        order.append("push")
        return await push(*args, **kwargs)

    def recorded_sign(*args, **kwargs):
        order.append("receipt")
        return sign(*args, **kwargs)

    monkeypatch.setattr(channels, "push", recorded_push)
    monkeypatch.setattr(receipts, "sign", recorded_sign)
    x = torch.randn(1, 3, 64)
    async with connect(client_dht) as p2p:
        a, _ = await _open(p2p, first)
        b, sid_b = await _open(p2p, second)
        _send(a, {"position": 0, "step_id": 0, "push_to": {"peer": second.peer_id, "session_id": sid_b}}, [x])
        _send(b, {"position": 0, "step_id": 0, "await_push": {"from": first.peer_id, "length": 3, "timeout": 20}})
        meta_a, _ = rh.unpack(await a.receive())
        meta_b, _ = rh.unpack(await b.receive())
        assert "push_error" not in meta_a and "receipt" in meta_a and meta_b["position"] == 3
        assert order == ["push", "receipt"]
        await a.close()
        await b.close()
