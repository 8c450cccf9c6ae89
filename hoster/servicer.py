"""The hoster's P2P servicer (`mesh.v1::BlockServicer.*`), see docs/PROTOCOL.md.

Every request is validated before use (model uid, block range, JSON metadata, tensor
dtype/shape/hidden size/byte length, lengths); anything wrong gets a typed error
response and the hoster keeps serving everyone else. Torch work runs on the
backend's compute thread, never on this event loop.

Every RPC is admitted per calling peer first (`hoster.admission`: in-flight and rate
limits, refused with `busy` before any work); the backend then runs inference steps ahead
of `forward` work, forwards in small units and round-robin over peers (`hoster.scheduler`),
so a flood from one peer cannot starve another peer's session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import AsyncIterator  # noqa: UP035 - hivemind detects streams by typing.AsyncIterator only

from hivemind.p2p import P2PContext, ServicerBase
from hivemind.proto import runtime_pb2

from hoster.adapters import known
from hoster.admission import Admission, Refused
from hoster.backend import Backend, BackendClosed, StepError
from hoster.cache import CacheFull
from hoster.prefix_cache import ForkError, fork_open, keep_on_close
from hoster.push import PushChannels, PushInbox, PushMissing, read_frame
from hoster.receipts import ReceiptBook
from subnet.logs import event
from subnet.model.adapters import session_model
from subnet.swarm import wire

log = logging.getLogger(__name__)

NAMESPACE = "mesh.v1"


class _Reject(Exception):
    """Internal: answer with a typed protocol error."""

    def __init__(self, type: str, message: str):
        super().__init__(message)
        self.type, self.message = type, message


class BlockServicer(ServicerBase):
    """Serves `info`, `forward` and the `inference` stream for one model's block span.

    The class name is part of the hivemind handler names (`mesh.v1::BlockServicer.rpc_forward`):
    clients hard-code it, so do not rename.
    """

    def __init__(self, backend: Backend, model_uid: str, info: Callable[[], dict], *,
                 session_timeout: float = 60.0, open_timeout: float = 30.0, max_batch_size: int = 64,
                 max_length: int = 8192, max_request_tokens: int = 8192, max_sessions: int = 1024):
        self.backend = backend
        self.model_uid = model_uid
        self.info = info
        self.session_timeout = session_timeout
        self.open_timeout = open_timeout
        self.max_batch_size = max_batch_size
        self.max_length = max_length
        self.max_request_tokens = max_request_tokens
        self.max_sessions = max_sessions
        self.hidden_size = backend.span.hidden_size
        self.max_tensor_bytes = max_request_tokens * self.hidden_size * 4
        self.open_streams = 0
        self.push_timeout = 120.0  # longest a step may wait for its pushed input (the client asks for less)
        self.inbox = PushInbox()
        self.admission = Admission()  # per-peer limits of every RPC (hoster.admission)
        self.channels: PushChannels | None = None  # set when the handlers are added to a P2P instance
        self.receipts: ReceiptBook | None = None  # signs every inference step (hoster.receipts), set by the Hoster
        self._stopping: asyncio.Event | None = None
        self._stopped_future: asyncio.Future | None = None

    # ------------------------------------------------------------------ helpers

    def _stop_event(self) -> asyncio.Event:
        if self._stopping is None:
            self._stopping = asyncio.Event()
        return self._stopping

    def _stop_future(self) -> asyncio.Future:
        """One future per servicer loop, done at shutdown (awaited next to each request read)."""
        if self._stopped_future is None:
            self._stopped_future = asyncio.get_running_loop().create_future()
            if self._stop_event().is_set():
                self._stopped_future.set_result(None)
        return self._stopped_future

    async def add_p2p_handlers(self, p2p, wrapper=None, *, namespace: str | None = None,
                               balanced: bool = False) -> None:
        push_name = self._get_handle_name(namespace, "rpc_push")
        self.channels = PushChannels(p2p, push_name)
        await super().add_p2p_handlers(p2p, wrapper, namespace=namespace, balanced=balanced)
        await p2p.add_binary_stream_handler(push_name, self._serve_push)

    async def remove_p2p_handlers(self, p2p, *, namespace: str | None = None) -> None:
        await super().remove_p2p_handlers(p2p, namespace=namespace)
        with contextlib.suppress(Exception):
            await p2p.remove_binary_stream_handler(self._get_handle_name(namespace, "rpc_push"))

    def begin_shutdown(self) -> None:
        """Called on the servicer's loop: open streams answer an error and end, new requests are refused."""
        self._stop_event().set()
        if self.channels is not None:
            self.channels.close()
        if self._stopped_future is not None and not self._stopped_future.done():
            self._stopped_future.set_result(None)

    def _check_uid(self, request: runtime_pb2.ExpertRequest) -> None:
        if request.uid != self.model_uid:
            raise _Reject("unknown_model", f"this hoster serves {self.model_uid!r}, not {request.uid[:200]!r}")

    def _check_range(self, meta: dict) -> tuple[int, int]:
        start = wire.get_int(meta, "start", lo=0, hi=1 << 20)
        end = wire.get_int(meta, "end", lo=0, hi=1 << 20)
        if not (self.backend.start <= start < end <= self.backend.end):
            raise _Reject("out_of_range", f"blocks [{start}, {end}) not within served "
                                          f"[{self.backend.start}, {self.backend.end})")
        return start, end

    def _one_hidden(self, request: runtime_pb2.ExpertRequest, batch_size: int | None = None):
        if len(request.tensors) != 1:
            raise _Reject("bad_request", f"expected exactly 1 tensor, got {len(request.tensors)}")
        msg = request.tensors[0]
        size = list(msg.size)
        if len(size) == 3 and size[0] > 0 and size[1] > 0 and size[0] * size[1] > self.max_request_tokens:
            raise _Reject("too_large", f"{size[0]}x{size[1]} positions exceed {self.max_request_tokens} per request")
        return wire.decode_tensor(msg, shape=[batch_size, None, self.hidden_size], max_bytes=self.max_tensor_bytes)

    @staticmethod
    def _ok(tensor=None, **meta) -> runtime_pb2.ExpertResponse:
        return runtime_pb2.ExpertResponse(
            tensors=[wire.encode_tensor(tensor)] if tensor is not None else [],
            metadata=wire.encode_metadata(meta) if meta else b"",
        )

    @staticmethod
    def _error(e: BaseException) -> runtime_pb2.ExpertResponse:
        if isinstance(e, (_Reject, wire.WireError, Refused)):
            return wire.error_response(e.type, e.message)
        if isinstance(e, CacheFull):
            return wire.error_response("busy", str(e))
        if isinstance(e, (StepError, ForkError)):
            return wire.error_response("bad_request", str(e))
        if isinstance(e, BackendClosed):
            return wire.error_response("busy", f"hoster unavailable: {e}")
        if isinstance(e, PushMissing):
            return wire.error_response("push_missing", str(e))
        event(log, "request_failed", level=logging.ERROR, error=repr(e))
        return wire.error_response("internal", type(e).__name__)

    # ------------------------------------------------------------------ RPCs

    async def rpc_info(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> runtime_pb2.ExpertResponse:
        try:
            self.admission.info(context.remote_id.to_base58())
        except Refused as e:
            return self._error(e)
        return runtime_pb2.ExpertResponse(metadata=wire.encode_metadata(self.info()))

    async def rpc_forward(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> runtime_pb2.ExpertResponse:
        peer, admitted = context.remote_id.to_base58(), False
        try:
            if self._stop_event().is_set():
                raise BackendClosed("shutting down")
            self._check_uid(request)
            meta = wire.decode_metadata(request.metadata)
            start, end = self._check_range(meta)
            adapter = self._adapter(meta)
            size = list(request.tensors[0].size) if len(request.tensors) == 1 else []
            if len(size) == 3 and size[0] > 0 and size[1] > 0:  # else _one_hidden refuses it
                self.admission.forward(peer, min(size[0] * size[1], self.max_request_tokens + 1))
                admitted = True
            hidden = self._one_hidden(request)
            extra = {"adapter": adapter} if adapter else {}  # plain forwards keep the plain call
            return self._ok(await self.backend.forward(hidden, start, end, peer=peer, **extra))
        except Exception as e:
            return self._error(e)
        finally:
            if admitted:
                self.admission.forward_done(peer)

    async def rpc_inference(self, requests: AsyncIterator[runtime_pb2.ExpertRequest],
                            context: P2PContext) -> AsyncIterator[runtime_pb2.ExpertResponse]:
        it = requests.__aiter__()
        session = None
        ahead: asyncio.Future | None = None  # the next request, read early while waiting for a push
        peer = context.remote_id.to_base58()
        try:
            self.admission.open_stream(peer)
        except Refused as e:
            yield self._error(e)
            return
        self.open_streams += 1
        try:
            first = await self._next(it, self.open_timeout)
            if first is None:
                return
            try:
                if self._stop_event().is_set():
                    raise BackendClosed("shutting down")
                self.admission.open_session(peer)
                session = self._open(first)
                hit = fork_open(self.backend, self.receipts, session, wire.decode_metadata(first.metadata))
            except Exception as e:
                yield self._error(e)
                return
            self.inbox.open(session.id, session.batch_size)
            yield self._ok(session_id=session.id, ok=True, **hit)
            event(log, "session_open", session=session.id[:8], peer=str(context.remote_id)[:16],
                  blocks=f"{session.start}:{session.end}", batch=session.batch_size, max_length=session.max_length)
            while True:
                try:
                    if ahead is None:
                        request = await self._next(it, self.session_timeout)
                    else:
                        request, ahead = await ahead, None
                except TimeoutError:
                    yield wire.error_response("unknown_session",
                                              f"session expired after {self.session_timeout:g}s idle")
                    event(log, "session_expired", session=session.id[:8])
                    return
                if request is None:
                    return
                try:
                    meta = wire.decode_metadata(request.metadata)
                    if meta.get("close") is True:
                        return
                    sid = meta.get("session_id")
                    if sid is not None and sid != session.id:
                        raise _Reject("unknown_session", "session_id does not match this stream's session")
                    position = wire.get_int(meta, "position", lo=0, hi=session.max_length)
                    push_from = self._push_source(meta, request)
                    if push_from is None:  # one row may stand for all (hoster.prefix_cache)
                        hidden = self._one_hidden(request, batch_size=None if session.batch_size > 1 else 1)
                    else:
                        ahead = asyncio.ensure_future(self._next(it, self.session_timeout))
                        hidden = await self.inbox.receive(session.id, wire.get_int(meta, "step_id", lo=0, hi=2**62),
                                                          push_from, min(self.push_timeout, wire.get_float(
                                                              meta["await_push"], "timeout", lo=0.0, hi=1e9)),
                                                          interrupt=ahead)
                        length = wire.get_int(meta["await_push"], "length", lo=1, hi=self.max_request_tokens)
                        if hidden.shape[1] != length:
                            raise _Reject("bad_request", f"pushed input has {hidden.shape[1]} positions, "
                                                         f"the step announced {length}")
                    out = await self.backend.step(session, hidden, position)
                    extra = {}
                    if "push_to" in meta:  # first: the next hoster waits for it, nobody waits for the receipt
                        extra.update(await self._push_onward(meta, out))
                    if self.receipts is not None:
                        extra["receipt"] = await self._receipt(session, hidden, position, out)
                    reply = self._ok(out, position=position + hidden.shape[1], **extra)
                    # the generator frame outlives the step: keep no prompt-sized buffers alive until
                    # the next request (measured: ~16 MB per open stream after a 1024-position step)
                    request = hidden = out = None
                    yield reply
                    reply = None
                except _Stopping:
                    raise
                except Exception as e:
                    yield self._error(e)
        except _Stopping:
            yield wire.error_response("busy", "hoster is shutting down; session closed")
        finally:
            self.open_streams -= 1
            self.admission.close_stream(peer)
            if ahead is not None:
                ahead.cancel()
            if session is not None:
                self.inbox.close(session.id)
                keep_on_close(self.backend, self.receipts, session, peer)
                self.backend.close_session(session)
                if self.receipts is not None:
                    self.receipts.close(session.id)
                event(log, "session_closed", session=session.id[:8], level=logging.DEBUG)

    async def _receipt(self, session, hidden, position: int, out) -> dict:
        """The signed receipt of this step; long inputs are hashed off the event loop."""
        args = (session.id, session.start, session.end, hidden, position, out,
                session_model(self.model_uid, session.adapter))  # receipts name the adapter too
        if hidden.shape[1] <= 64:
            return self.receipts.sign(*args)
        return await asyncio.get_running_loop().run_in_executor(None, self.receipts.sign, *args)

    def _push_source(self, meta: dict, request: runtime_pb2.ExpertRequest) -> str | None:
        """The peer that pushes this step's input (`await_push`), or None when the request carries it."""
        spec = meta.get("await_push")
        if spec is None:
            return None
        if not isinstance(spec, dict) or not isinstance(spec.get("from"), str) or len(spec["from"]) > 128:
            raise _Reject("bad_request", "await_push must be {\"from\": peer_id, \"length\": n, \"timeout\": s}")
        if request.tensors:
            raise _Reject("bad_request", "a step that awaits a push carries no tensors")
        return spec["from"]

    async def _push_onward(self, meta: dict, out) -> dict:
        """Send this step's output to the next hoster (`push_to`); problems go back to the client."""
        spec = meta["push_to"]
        if not isinstance(spec, dict) or not isinstance(spec.get("peer"), str) \
                or not isinstance(spec.get("session_id"), str) or len(spec["session_id"]) > 128:
            return {"push_error": "push_to must be {\"peer\": peer_id, \"session_id\": id}"}
        if self.channels is None:
            return {"push_error": "this hoster cannot push"}
        try:
            step_id = wire.get_int(meta, "step_id", lo=0, hi=2**62)
            await self.channels.push(spec["peer"], spec["session_id"], step_id, out)
        except Exception as e:
            event(log, "push_failed", level=logging.INFO, peer=spec["peer"][-8:], error=repr(e)[:200])
            return {"push_error": f"{type(e).__name__}: {str(e)[:200]}"}
        return {}

    async def _serve_push(self, stream_info, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A persistent stream of inputs pushed by an upstream hoster (`rpc_push`, never answered).

        A raw libp2p stream read frame by frame (hivemind's framing, sizes bounded before
        reading): no per-message tasks or queues on this hot path.
        """
        sender = stream_info.peer_id.to_base58()
        max_frame = self.max_tensor_bytes + wire.MAX_METADATA_BYTES + 1024
        if not self.admission.open_push(sender):
            writer.close()
            return
        try:
            while (request := await read_frame(reader, max_frame)) is not None:
                if not self.admission.push_frame(sender):
                    self.inbox.rejected += 1
                    continue
                try:
                    meta = wire.decode_metadata(request.metadata)
                    sid = meta.get("session_id")
                    batch_size = self.inbox.batch_size(sid) if isinstance(sid, str) else None
                    if batch_size is None:
                        self.inbox.rejected += 1
                        continue
                    hidden = self._one_hidden(request, batch_size=batch_size)
                    self.inbox.deliver(sid, wire.get_int(meta, "step_id", lo=0, hi=2**62), sender, hidden)
                except Exception as e:
                    self.inbox.rejected += 1
                    event(log, "push_rejected", level=logging.DEBUG, peer=sender[-8:], error=repr(e)[:200])
        except Exception as e:  # broken framing or connection: drop this stream, the sender re-opens
            event(log, "push_stream_dropped", level=logging.DEBUG, peer=sender[-8:], error=repr(e)[:200])
        finally:
            self.admission.close_push(sender)
            writer.close()

    def _open(self, request: runtime_pb2.ExpertRequest):
        meta = wire.decode_metadata(request.metadata)
        if "start" not in meta and ("position" in meta or request.tensors):
            raise _Reject("unknown_session", "no session is open on this stream (send an open request first)")
        if request.tensors:
            raise _Reject("bad_request", "the open request carries no tensors")
        self._check_uid(request)
        start, end = self._check_range(meta)
        max_length = wire.get_int(meta, "max_length", lo=1, hi=1 << 30)
        if max_length > self.max_length:
            raise _Reject("too_large", f"max_length {max_length} exceeds this hoster's limit {self.max_length}")
        batch_size = wire.get_int(meta, "batch_size", lo=1, hi=1 << 20, default=1)
        if batch_size > self.max_batch_size:
            raise _Reject("too_large", f"batch_size {batch_size} exceeds {self.max_batch_size}")
        if len(self.backend.sessions) >= self.max_sessions:
            raise CacheFull(f"too many open sessions ({self.max_sessions})")
        adapter = self._adapter(meta)
        session = self.backend.open_session(start, end, batch_size, max_length)
        session.adapter = adapter
        return session

    def _adapter(self, meta: dict) -> str | None:
        """The request's LoRA adapter (`"adapter"`, one this hoster loaded: hoster.adapters), or None."""
        adapter = meta.get("adapter") or None
        if adapter is not None and (not isinstance(adapter, str) or not known(self.backend.span, adapter)):
            raise _Reject("unknown_adapter", f"this hoster has no adapter {str(adapter)[:200]!r}")
        return adapter

    async def _next(self, it, timeout: float):
        """Next request, None at end of stream; TimeoutError when idle; _Stopping at shutdown."""
        stop = self._stop_future()
        if stop.done():
            raise _Stopping()
        nxt = asyncio.ensure_future(anext(it))
        try:
            done, _ = await asyncio.wait((nxt, stop), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # e.g. a read-ahead given up when its stream ends: never leave the
            nxt.cancel()  # read pending (asyncio reported it destroyed while pending, and the stream's aclose
            raise  # then failed with "asynchronous generator is already running")
        if nxt in done:
            try:
                return nxt.result()
            except StopAsyncIteration:
                return None
            except Exception:  # the client went away
                return None
        nxt.cancel()
        if stop.done():
            raise _Stopping()
        raise TimeoutError()


class _Stopping(Exception):
    """Internal: the hoster is shutting down."""
