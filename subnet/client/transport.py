"""Client side of the hoster RPCs in docs/PROTOCOL.md, each call bounded by a timeout.

hivemind derives handler names from the servicer class name and namespace
(`{namespace}::{Class}.{method}`); the client does not import the hoster (import direction),
so the name is fixed here and must match the hoster's servicer class.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import torch
from hivemind.p2p import P2P, PeerID
from hivemind.proto import runtime_pb2

from subnet.client.runtime import wait_for
from subnet.swarm import wire

NAMESPACE = "mesh.v1"
SERVICER_CLASS = "BlockServicer"
MAX_RESPONSE_BYTES = 512 * 1024 * 1024


def handle_name(method: str, servicer_class: str = SERVICER_CLASS, namespace: str = NAMESPACE) -> str:
    return f"{namespace}::{servicer_class}.{method}"


class RemoteError(RuntimeError):
    """A hoster answered with a protocol error (or something that is not a valid answer)."""

    def __init__(self, peer_id: str, type: str, message: str):
        super().__init__(f"hoster {peer_id[:12]}… answered {type}: {message}")
        self.peer_id = peer_id
        self.type = type
        self.message = message


def _check(peer_id: str, resp: runtime_pb2.ExpertResponse) -> dict:
    err = wire.response_error(resp)
    if err is not None:
        raise RemoteError(peer_id, *err)
    try:
        return wire.decode_metadata(resp.metadata)
    except wire.WireError as e:
        raise RemoteError(peer_id, e.type, str(e)) from None


def _peer(peer_id: str) -> PeerID:
    return PeerID.from_base58(peer_id)


async def rpc_info(p2p: P2P, peer_id: str, timeout: float) -> dict:
    """The hoster's announcement payload, fetched directly (also our ping)."""
    req = runtime_pb2.ExpertRequest(metadata=wire.encode_metadata({}))
    resp = await wait_for(
        p2p.call_protobuf_handler(_peer(peer_id), handle_name("rpc_info"), req, runtime_pb2.ExpertResponse),
        timeout, f"rpc_info to {peer_id[:12]}…",
    )
    return _check(peer_id, resp)


async def rpc_forward(p2p: P2P, peer_id: str, model_uid: str, start: int, end: int, hidden: torch.Tensor,
                      timeout: float) -> torch.Tensor:
    """Stateless forward of blocks [start, end) (no KV cache)."""
    req = runtime_pb2.ExpertRequest(
        uid=model_uid, metadata=wire.encode_metadata({"start": start, "end": end}), tensors=[wire.encode_tensor(hidden)]
    )
    resp = await wait_for(
        p2p.call_protobuf_handler(_peer(peer_id), handle_name("rpc_forward"), req, runtime_pb2.ExpertResponse),
        timeout, f"rpc_forward to {peer_id[:12]}…",
    )
    _check(peer_id, resp)
    return _one_tensor(peer_id, resp, hidden.shape)


def _one_tensor(peer_id: str, resp: runtime_pb2.ExpertResponse, shape: torch.Size) -> torch.Tensor:
    if len(resp.tensors) != 1:
        raise RemoteError(peer_id, "bad_response", f"expected 1 tensor, got {len(resp.tensors)}")
    try:
        return wire.decode_tensor(resp.tensors[0], shape=list(shape), max_bytes=MAX_RESPONSE_BYTES)
    except wire.WireError as e:
        raise RemoteError(peer_id, "bad_response", str(e)) from None


class InferenceStream:
    """One open `rpc_inference` stream: a KV-cache session on one hoster for blocks [start, end)."""

    def __init__(self, peer_id: str, start: int, end: int):
        self.peer_id = peer_id
        self.start = start
        self.end = end
        self.session_id: str | None = None
        self._queue: asyncio.Queue[runtime_pb2.ExpertRequest | None] = asyncio.Queue()
        self._responses: AsyncIterator[runtime_pb2.ExpertResponse] | None = None
        self.closed = False
        self.pending = 0  # step requests sent and not yet answered
        self.stale = 0  # of those, answers nobody waits for any more (dropped when read)

    async def _requests(self) -> AsyncIterator[runtime_pb2.ExpertRequest]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item

    @classmethod
    async def open(cls, p2p: P2P, peer_id: str, model_uid: str, start: int, end: int, max_length: int,
                   batch_size: int, timeout: float) -> InferenceStream:
        self = cls(peer_id, start, end)
        meta = {"start": start, "end": end, "max_length": max_length, "batch_size": batch_size}
        self._queue.put_nowait(runtime_pb2.ExpertRequest(uid=model_uid, metadata=wire.encode_metadata(meta)))
        try:
            self._responses = await wait_for(
                p2p.iterate_protobuf_handler(_peer(peer_id), handle_name("rpc_inference"), self._requests(),
                                             runtime_pb2.ExpertResponse),
                timeout, f"opening a session on {peer_id[:12]}…",
            )
            reply = await self._next(timeout)
            self.session_id = str(_check(peer_id, reply).get("session_id", ""))
        except BaseException:
            await self.close()
            raise
        return self

    async def _next(self, timeout: float) -> runtime_pb2.ExpertResponse:
        assert self._responses is not None
        try:
            return await wait_for(anext(self._responses), timeout, f"hoster {self.peer_id[:12]}…")
        except StopAsyncIteration:
            raise ConnectionError(f"hoster {self.peer_id[:12]}… closed the stream") from None

    async def step(self, hidden: torch.Tensor, position: int, timeout: float) -> torch.Tensor:
        """Run positions `position .. position+n-1` (KV cache truncated to `position` first)."""
        self.send_step(position, hidden)
        out, _ = await self.receive_step(position, hidden.shape, timeout)
        return out

    def send_step(self, position: int, hidden: torch.Tensor | None, **meta) -> None:
        """Queue one step request; `hidden=None` with `await_push=...` for a step whose input is pushed.

        Every request gets exactly one response, read in order by `receive_step`.
        """
        if self.closed:
            raise ConnectionError("stream is closed")
        req = runtime_pb2.ExpertRequest(metadata=wire.encode_metadata({"position": position, **meta}),
                                        tensors=[] if hidden is None else [wire.encode_tensor(hidden)])
        self._queue.put_nowait(req)
        self.pending += 1

    def abandon(self) -> None:
        """Forget the answer to the oldest pending request (it will be read and dropped)."""
        self.stale += 1

    async def receive_step(self, position: int, shape: torch.Size | tuple[int, ...],
                           timeout: float) -> tuple[torch.Tensor, dict]:
        """The output of the oldest pending step (`shape` = its `[batch, n, hidden]`) and its metadata."""
        if self.closed:
            raise ConnectionError("stream is closed")
        while self.stale:
            await self._next(timeout)
            self.stale -= 1
            self.pending -= 1
        resp = await self._next(timeout)
        self.pending -= 1
        meta = _check(self.peer_id, resp)
        got = meta.get("position")
        if got is not None and got != position + shape[1]:
            raise RemoteError(self.peer_id, "bad_response", f"position {got}, expected {position + shape[1]}")
        return _one_tensor(self.peer_id, resp, torch.Size(shape)), meta

    async def close(self) -> None:
        """End the stream (the hoster frees the cache); never raises, never hangs."""
        if self.closed:
            return
        self.closed = True
        self._queue.put_nowait(None)
        if self._responses is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._responses.aclose(), 2.0)
