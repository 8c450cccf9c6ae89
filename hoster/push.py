"""Hoster-to-hoster forwarding of a step's output (`rpc_push`, see docs/PROTOCOL.md).

Without it every hop of a decode step goes client -> hoster -> client: for a chain of k
hosters that is 2k one-way messages and k wake-ups of the client per token. With push, the
client sends step `s` to all k hosters at once (the first with its input, the others told
to wait for a pushed input), each hoster sends its output straight to the next one, and
the client only waits: k + 1 one-way messages on the critical path.

`PushChannels` keeps one persistent libp2p stream per downstream peer and writes each push
before the hoster answers its client, so the critical path goes first. `PushInbox` pairs
pushes with the steps that wait for them: a push is accepted only for a session that is
open here, only from the peer the client named, and at most `MAX_EARLY` pushes per session
may arrive before their step (anything else is dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from hivemind.p2p import P2P, PeerID
from hivemind.proto import runtime_pb2

from subnet.logs import event
from subnet.swarm import wire

log = logging.getLogger(__name__)

MAX_EARLY = 4  # pushes that may wait for their step, per session
MAX_CHANNELS = 64  # open downstream streams per hoster (least recently used closed first)


class PushMissing(Exception):
    """The pushed input of a step did not arrive (protocol error type `push_missing`)."""


@dataclass
class _Mailbox:
    batch_size: int
    waiting: dict[int, tuple[str, asyncio.Future]] = field(default_factory=dict)  # step -> (sender, fut)
    early: OrderedDict[int, tuple[str, torch.Tensor]] = field(default_factory=OrderedDict)


class PushInbox:
    """Pushed inputs for the sessions open on this hoster, keyed by session id (event-loop only)."""

    def __init__(self) -> None:
        self._boxes: dict[str, _Mailbox] = {}
        self.rejected = 0  # pushes dropped (unknown session, wrong sender, overflow): observability

    def open(self, session_id: str, batch_size: int) -> None:
        self._boxes[session_id] = _Mailbox(batch_size)

    def close(self, session_id: str) -> None:
        box = self._boxes.pop(session_id, None)
        if box is not None:
            for _, fut in box.waiting.values():
                if not fut.done():
                    fut.set_exception(PushMissing("session closed"))

    def batch_size(self, session_id: str) -> int | None:
        box = self._boxes.get(session_id)
        return None if box is None else box.batch_size

    def deliver(self, session_id: str, step_id: int, sender: str, hidden: torch.Tensor) -> bool:
        """Hand a pushed input to its waiting step, or keep it until the step asks (bounded)."""
        box = self._boxes.get(session_id)
        if box is None:
            self.rejected += 1
            return False
        waiting = box.waiting.get(step_id)
        if waiting is not None:
            expected, fut = waiting
            if sender != expected or fut.done():
                self.rejected += 1
                return False
            fut.set_result(hidden)
            return True
        box.early[step_id] = (sender, hidden)
        while len(box.early) > MAX_EARLY:
            box.early.popitem(last=False)
            self.rejected += 1
        return True

    async def receive(self, session_id: str, step_id: int, sender: str, timeout: float,
                      interrupt: asyncio.Future | None = None) -> torch.Tensor:
        """The input pushed by `sender` for `step_id`; PushMissing after `timeout` s, or as soon as
        `interrupt` (the client's next request) completes first."""
        box = self._boxes.get(session_id)
        if box is None:
            raise PushMissing("session is not open")
        early = box.early.pop(step_id, None)
        if early is not None:
            if early[0] == sender:
                return early[1]
            self.rejected += 1
        fut = asyncio.get_running_loop().create_future()
        box.waiting[step_id] = (sender, fut)
        try:
            wait = {fut} if interrupt is None else {fut, interrupt}
            done, _ = await asyncio.wait(wait, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if fut in done:
                return fut.result()
            if interrupt is not None and interrupt in done:
                raise PushMissing("the client sent its next request before the pushed input arrived")
            raise PushMissing(f"no pushed input from {sender[:16]} within {timeout:g}s")
        finally:
            box.waiting.pop(step_id, None)
            if not fut.done():
                fut.cancel()


async def read_frame(reader: asyncio.StreamReader, max_bytes: int) -> runtime_pb2.ExpertRequest | None:
    """One hivemind-framed ExpertRequest (marker, 8-byte length, protobuf), None at a clean end.

    Unlike hivemind's reader this bounds the length before reading: a peer announcing more than
    `max_bytes` gets its stream dropped (ValueError) instead of making us buffer it.
    """
    try:
        marker = await reader.readexactly(1)
    except asyncio.IncompleteReadError:
        return None
    length = int.from_bytes(await reader.readexactly(P2P.HEADER_LEN), P2P.BYTEORDER)
    if length > max_bytes:
        raise ValueError(f"push frame of {length} bytes exceeds {max_bytes}")
    data = await reader.readexactly(length)
    if marker != P2P.MESSAGE_MARKER:
        return None  # hivemind's end-of-stream / error marker
    return runtime_pb2.ExpertRequest.FromString(data)


class PushChannels:
    """Persistent outgoing push streams, one per downstream hoster (event-loop only)."""

    def __init__(self, p2p: P2P, handle_name: str, *, open_timeout: float = 5.0):
        self.p2p = p2p
        self.handle_name = handle_name
        self.open_timeout = open_timeout
        self._channels: OrderedDict[str, tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.Task]] = \
            OrderedDict()
        self._opening: dict[str, asyncio.Future] = {}

    async def push(self, peer_id: str, session_id: str, step_id: int, hidden: torch.Tensor) -> None:
        """Write one pushed input to `peer_id`'s session; raises if the stream cannot be opened/written."""
        msg = runtime_pb2.ExpertRequest(
            metadata=wire.encode_metadata({"session_id": session_id, "step_id": step_id}),
            tensors=[wire.encode_tensor(hidden)],
        )
        writer = await self._writer(peer_id)
        try:
            await P2P.send_protobuf(msg, writer)
        except Exception:
            self._drop(peer_id)
            raise

    async def _writer(self, peer_id: str) -> asyncio.StreamWriter:
        ch = self._channels.get(peer_id)
        if ch is not None and not ch[1].is_closing():
            self._channels.move_to_end(peer_id)
            return ch[1]
        self._drop(peer_id)
        opening = self._opening.get(peer_id)
        if opening is None:
            opening = asyncio.ensure_future(self._open(peer_id))
            self._opening[peer_id] = opening
            opening.add_done_callback(lambda _: self._opening.pop(peer_id, None))
        return await asyncio.shield(opening)

    async def _open(self, peer_id: str) -> asyncio.StreamWriter:
        _, reader, writer = await asyncio.wait_for(
            self.p2p.call_binary_stream_handler(PeerID.from_base58(peer_id), self.handle_name), self.open_timeout)
        watcher = asyncio.ensure_future(self._watch(peer_id, reader, writer))
        self._channels[peer_id] = (reader, writer, watcher)
        while len(self._channels) > MAX_CHANNELS:
            self._drop(next(iter(self._channels)))
        event(log, "push_channel_open", peer=peer_id[-8:], level=logging.DEBUG)
        return writer

    async def _watch(self, peer_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The receiver never answers; EOF or an error means the stream is gone."""
        with contextlib.suppress(Exception):
            while await reader.read(1 << 16):
                pass
        ch = self._channels.get(peer_id)
        if ch is not None and ch[1] is writer:
            self._channels.pop(peer_id, None)
        writer.close()

    def _drop(self, peer_id: str) -> None:
        ch = self._channels.pop(peer_id, None)
        if ch is not None:
            ch[2].cancel()
            ch[1].close()

    def close(self) -> None:
        for peer_id in list(self._channels):
            self._drop(peer_id)
