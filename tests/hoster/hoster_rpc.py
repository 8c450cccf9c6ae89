"""Minimal test-side caller of the hoster RPCs (the real client lives in subnet/client/)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import torch
from hivemind.p2p import P2P, PeerID
from hivemind.proto import runtime_pb2

from subnet.swarm import wire

NAMESPACE = "mesh.v1"


@contextlib.asynccontextmanager
async def connect(dht):
    """A P2P replica of a test DHT peer, for calling hosters; shut down afterwards."""
    from hoster.server import own_p2p_replica

    p2p = await own_p2p_replica(dht)
    try:
        yield p2p
    finally:
        await p2p.shutdown()


def handle(method: str) -> str:
    return f"{NAMESPACE}::BlockServicer.{method}"


def request(uid: str = "", meta: dict | None = None, tensors=()) -> runtime_pb2.ExpertRequest:
    return runtime_pb2.ExpertRequest(uid=uid, metadata=wire.encode_metadata(meta or {}),
                                     tensors=[t if isinstance(t, runtime_pb2.Tensor) else wire.encode_tensor(t)
                                              for t in tensors])


def unpack(resp: runtime_pb2.ExpertResponse) -> tuple[dict, list[torch.Tensor]]:
    """(metadata, tensors); raises RemoteError for protocol errors."""
    err = wire.response_error(resp)
    if err is not None:
        raise RemoteError(*err)
    return wire.decode_metadata(resp.metadata), [wire.decode_tensor(t) for t in resp.tensors]


class RemoteError(RuntimeError):
    def __init__(self, type: str, message: str):
        super().__init__(f"{type}: {message}")
        self.type, self.message = type, message


async def call(p2p: P2P, peer: str, method: str, req: runtime_pb2.ExpertRequest, timeout: float = 30.0):
    return await asyncio.wait_for(
        p2p.call_protobuf_handler(PeerID.from_base58(peer), handle(method), req, runtime_pb2.ExpertResponse),
        timeout)


async def info(p2p: P2P, peer: str) -> dict:
    return unpack(await call(p2p, peer, "rpc_info", request()))[0]


async def forward(p2p: P2P, peer: str, uid: str, start: int, end: int, hidden: torch.Tensor) -> torch.Tensor:
    return unpack(await call(p2p, peer, "rpc_forward", request(uid, {"start": start, "end": end}, [hidden])))[1][0]


class Stream:
    """One rpc_inference stream: send a request, await the matching reply (all with timeouts)."""

    def __init__(self, p2p: P2P, peer: str, timeout: float = 30.0):
        self.p2p, self.peer, self.timeout = p2p, peer, timeout
        self.queue: asyncio.Queue = asyncio.Queue()
        self.responses: AsyncIterator | None = None

    async def _requests(self):
        while (item := await self.queue.get()) is not None:
            yield item

    async def send(self, req: runtime_pb2.ExpertRequest) -> runtime_pb2.ExpertResponse:
        self.queue.put_nowait(req)
        if self.responses is None:
            self.responses = await asyncio.wait_for(self.p2p.iterate_protobuf_handler(
                PeerID.from_base58(self.peer), handle("rpc_inference"), self._requests(),
                runtime_pb2.ExpertResponse), self.timeout)
        return await self.receive()

    async def receive(self, timeout: float | None = None) -> runtime_pb2.ExpertResponse:
        return await asyncio.wait_for(anext(self.responses), timeout or self.timeout)

    async def open(self, uid: str, start: int, end: int, max_length: int, batch_size: int = 1) -> str:
        meta, _ = unpack(await self.send(request(uid, {"start": start, "end": end, "max_length": max_length,
                                                       "batch_size": batch_size})))
        return meta["session_id"]

    async def step(self, hidden: torch.Tensor, position: int) -> torch.Tensor:
        meta, tensors = unpack(await self.send(request(meta={"position": position}, tensors=[hidden])))
        assert meta["position"] == position + hidden.shape[1]
        return tensors[0]

    async def close(self) -> None:
        self.queue.put_nowait(None)
        if self.responses is not None:
            try:
                await asyncio.wait_for(self.responses.aclose(), 2.0)
            except BaseException:
                pass
