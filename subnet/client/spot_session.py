"""Spot-check sessions: a validator's probe that is ordinary client traffic (docs/PROTOCOL.md,
"Accountable serving").

`SpotCheckClient.run` opens a plain `rpc_inference` session on one hoster, exactly as
`InferenceSession` does (same RPC, same metadata, the receipt of each step verified), from a
client-mode DHT peer with a fresh random identity; `rotate()` replaces that identity (the
validator's spot-check duty does it every epoch), so a hoster cannot learn a probe's peer id.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from consensus.evidence import Receipt
from subnet.client.runtime import ClientRuntime
from subnet.client.transport import InferenceStream
from subnet.client.verification import SpanCheck, mirror_and_verify


class SpotCheckClient:
    """Blocking runner for `validator.spot_checks.SpotCheckDuty` (which cannot import the client)."""

    def __init__(self, initial_peers: Sequence[str], model_uid: str, *, timeout: float = 30.0):
        self.initial_peers, self.model_uid, self.timeout = list(initial_peers), model_uid, timeout
        self.runtime: ClientRuntime | None = None

    def rotate(self) -> None:
        """A new client identity (a new client-mode DHT peer) for the next sessions."""
        old, self.runtime = self.runtime, ClientRuntime(None, self.initial_peers, model_uids=[self.model_uid])
        if old is not None:
            old.close()

    def run(self, peer_id: str, start: int, end: int, steps: Sequence[torch.Tensor],
            max_length: int) -> list[tuple[torch.Tensor, Receipt | None]]:
        """Send `steps` (consecutive inputs from position 0) to `peer_id`; each output with its verified receipt."""
        if self.runtime is None:
            self.rotate()
        bound = self.timeout * (len(steps) + 2)
        return self.runtime.run(self._run(peer_id, start, end, list(steps), max_length), timeout=bound)

    async def _run(self, peer_id: str, start: int, end: int, steps: list[torch.Tensor],
                   max_length: int) -> list[tuple[torch.Tensor, Receipt | None]]:
        stream = await InferenceStream.open(self.runtime.p2p, peer_id, self.model_uid, start, end, max_length, 1,
                                            self.timeout)
        check, out, position = SpanCheck(), [], 0
        try:
            for x in steps:
                stream.send_step(position, x)
                y, meta = await stream.receive_step(position, x.shape, self.timeout * (1 + x.shape[1] / 2048))
                mirror_and_verify(check, stream, peer_id, self.model_uid, start, end, x, position, y, meta)
                out.append((y, check.receipt))
                position += x.shape[1]
        finally:
            await stream.close()
        return out

    def close(self) -> None:
        if self.runtime is not None:
            self.runtime.close()
            self.runtime = None
