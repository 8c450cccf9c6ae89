"""Client side of the hoster RPCs in docs/PROTOCOL.md, each call bounded by a timeout.

hivemind derives handler names from the servicer class name and namespace
(`{namespace}::{Class}.{method}`); the client does not import the hoster (import direction),
so the name is fixed here and must match the hoster's servicer class.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

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
                      timeout: float, adapter: str | None = None) -> torch.Tensor:
    """Stateless forward of blocks [start, end) (no KV cache), with LoRA `adapter` if given."""
    meta = {"start": start, "end": end, **({"adapter": adapter} if adapter else {})}
    req = runtime_pb2.ExpertRequest(uid=model_uid, metadata=wire.encode_metadata(meta),
                                    tensors=[wire.encode_tensor(hidden)])
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


class StepDeadline(TimeoutError):
    """A step missed its deadline (`subnet.client.deadlines`); `alive` says whether the hoster
    still answered a liveness probe (None: not probed)."""

    def __init__(self, message: str, alive: bool | None = None):
        super().__init__(message)
        self.alive = alive


Probe = Callable[[], Awaitable[bool]]


class InferenceStream:
    """One open `rpc_inference` stream: a KV-cache session on one hoster for blocks [start, end).

    The stream is read directly (not through `P2P.iterate_protobuf_handler`, whose reader
    swallows the end of the stream until our request iterator ends): when the hoster's
    connection closes (its process or machine died), the waiting step fails at once.
    """

    def __init__(self, peer_id: str, start: int, end: int):
        self.peer_id = peer_id
        self.start = start
        self.end = end
        self.session_id: str | None = None
        self.prefix_hit = 0  # positions the hoster forked from its prefix cache at open
        self._queue: asyncio.Queue[runtime_pb2.ExpertRequest | None] = asyncio.Queue()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._write_task: asyncio.Task | None = None
        self._read: asyncio.Future | None = None  # the read of the next response, kept across a missed deadline
        self._broken: str | None = None  # why the stream cannot be read any more
        self.closed = False
        self.pending = 0  # step requests sent and not yet answered
        self.stale = 0  # of those, answers nobody waits for any more (dropped when read)

    async def _write_loop(self) -> None:
        assert self._writer is not None
        while True:
            item = await self._queue.get()
            await P2P.send_protobuf(P2P.END_OF_STREAM if item is None else item, self._writer)
            if item is None:
                return

    @classmethod
    async def open(cls, p2p: P2P, peer_id: str, model_uid: str, start: int, end: int, max_length: int,
                   batch_size: int, timeout: float, prefix: list | None = None,
                   adapter: str | None = None) -> InferenceStream:
        self = cls(peer_id, start, end)
        meta = {"start": start, "end": end, "max_length": max_length, "batch_size": batch_size}
        if prefix:
            meta["prefix"] = prefix  # cached-prefix candidates (subnet.client.prefix)
        if adapter:
            meta["adapter"] = adapter  # a LoRA adapter the hoster announced (docs/PROTOCOL.md)
        self._queue.put_nowait(runtime_pb2.ExpertRequest(uid=model_uid, metadata=wire.encode_metadata(meta)))
        try:
            _, self._reader, self._writer = await wait_for(
                p2p.call_binary_stream_handler(_peer(peer_id), handle_name("rpc_inference")),
                timeout, f"opening a session on {peer_id[:12]}…",
            )
            self._write_task = asyncio.ensure_future(self._write_loop())
            self._write_task.add_done_callback(lambda t: t.cancelled() or t.exception())
            reply = await self._next(timeout)
            opened = _check(peer_id, reply)
            self.session_id = str(opened.get("session_id", ""))
            hit = opened.get("prefix_hit", 0)
            self.prefix_hit = hit if isinstance(hit, int) and not isinstance(hit, bool) and hit > 0 else 0
        except BaseException:
            await self.close()
            raise
        return self

    async def _read_one(self) -> runtime_pb2.ExpertResponse:
        assert self._reader is not None
        try:
            resp, err = await P2P.receive_protobuf(runtime_pb2.ExpertResponse, self._reader)
        except (asyncio.IncompleteReadError, ConnectionError, OSError, TypeError) as e:
            self._broken = f"hoster {self.peer_id[:12]}… closed the stream"
            raise ConnectionError(self._broken) from e
        if err is not None:
            raise RemoteError(self.peer_id, "handler_error", err.message)
        return resp

    async def _next(self, timeout: float, deadline: float | None = None,
                    probe: Probe | None = None) -> runtime_pb2.ExpertResponse:
        """The next response within `timeout` (the outer bound).

        With a `deadline` (< timeout): a response still missing at half the deadline starts
        `probe` (is the hoster alive?); at the deadline, if the probe failed, `StepDeadline(alive=False)`;
        if it succeeded, we wait until twice the deadline, then `StepDeadline(alive=True)`.
        A missed deadline leaves the read in flight (its answer is the next `_next`'s, e.g. dropped
        as stale); the outer timeout, a cancellation or a closed connection breaks the stream.
        """
        if self._broken is not None:
            raise ConnectionError(self._broken)
        if self._read is None:
            self._read = asyncio.ensure_future(self._read_one())
        read = self._read
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        end = t0 + timeout
        what = f"hoster {self.peer_id[:12]}…"

        async def until(t: float, *others: asyncio.Future) -> bool:
            """Wait for the read (or any of `others`) until time `t`; True when the read is done."""
            await asyncio.wait({read, *others}, timeout=max(0.0, min(t, end) - loop.time()),
                               return_when=asyncio.FIRST_COMPLETED)
            return read.done()

        check: asyncio.Future | None = None
        try:
            if deadline is None:
                await until(end)
            elif not await until(t0 + deadline / 2):
                check = asyncio.ensure_future(probe()) if probe is not None else None
                if not await until(t0 + deadline):
                    if check is not None and not check.done():
                        await until(end, check)  # whichever comes first: the answer or the probe's verdict
                    if not read.done() and loop.time() < end - 0.01:
                        alive = check.result() if check is not None and check.done() else None
                        if alive is not True:
                            raise StepDeadline(f"{what} did not answer within {loop.time() - t0:.1f}s (liveness "
                                               f"probe: {'no answer' if alive is False else 'none'})", alive)
                        if not await until(t0 + 2 * deadline) and loop.time() < end - 0.01:
                            raise StepDeadline(f"{what} is alive but did not answer within {2 * deadline:.1f}s",
                                               True)
            if not read.done():
                raise TimeoutError(f"{what} timed out after {timeout:.1f}s")
        except StepDeadline:
            raise
        except BaseException:  # the outer timeout or a cancellation: this stream's framing is lost
            read.cancel()
            self._read = None
            self._broken = self._broken or f"{what}: a read was abandoned"
            raise
        finally:
            if check is not None and not check.done():
                check.cancel()
        self._read = None
        return read.result()

    async def step(self, hidden: torch.Tensor, position: int, timeout: float, deadline: float | None = None,
                   probe: Probe | None = None) -> torch.Tensor:
        """Run positions `position .. position+n-1` (KV cache truncated to `position` first)."""
        self.send_step(position, hidden)
        out, _ = await self.receive_step(position, hidden.shape, timeout, deadline, probe)
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

    async def receive_step(self, position: int, shape: torch.Size | tuple[int, ...], timeout: float,
                           deadline: float | None = None, probe: Probe | None = None) -> tuple[torch.Tensor, dict]:
        """The output of the oldest pending step (`shape` = its `[batch, n, hidden]`) and its metadata."""
        if self.closed:
            raise ConnectionError("stream is closed")
        while self.stale:
            await self._next(timeout, deadline, probe)
            self.stale -= 1
            self.pending -= 1
        resp = await self._next(timeout, deadline, probe)
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
        if self._read is not None:
            self._read.cancel()
            self._read = None
        if self._write_task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(self._write_task), 2.0)
            self._write_task.cancel()
        if self._writer is not None:
            with contextlib.suppress(BaseException):
                self._writer.close()
