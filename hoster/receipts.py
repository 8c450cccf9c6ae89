"""Signed step receipts: the hoster answers for every inference step it returns (docs/PROTOCOL.md,
"Accountable serving").

Per session the hoster keeps the input chain (`consensus.evidence`: 32 bytes per position,
rollbacks cut it) and signs, with its node key, the receipt of each step: its peer id, the
model, the epoch, the block span, the positions, the chain over the whole input prefix and
the hash of the output it sends. A client holding a receipt whose output a recomputation
contradicts has evidence against this hoster that anyone can check.
"""

from __future__ import annotations

import torch

from consensus.evidence import Receipt, chain_seed, chain_state, extend_chain, output_hash
from keys.node_key import NodeKey


class ReceiptBook:
    """Input chains of the open sessions and the signing of their steps.

    `epoch` is the chain epoch receipts are bound to; the hoster's epoch duty keeps it current
    (0 for a hoster without a chain).
    """

    def __init__(self, node_key: NodeKey, model_uid: str):
        self.node_key = node_key
        self.model_uid = model_uid
        self.epoch = 0
        self._chains: dict[str, tuple[torch.dtype, bytearray]] = {}

    def sign(self, session_id: str, start: int, end: int, hidden: torch.Tensor, position: int,
             out: torch.Tensor, model: str | None = None) -> dict:
        """Extend the session's chain with this step's input and return the signed receipt (wire form).
        `model`: what the step computed, `<uid>:<adapter>` for a LoRA session (default: the model uid)."""
        entry = self._chains.get(session_id)
        if entry is None or position == 0:
            entry = self._chains[session_id] = (hidden.dtype, bytearray(
                chain_seed(hidden.dtype, hidden.shape[0], hidden.shape[2])))
        dtype, states = entry
        extend_chain(states, hidden.to(dtype), position)
        n = hidden.shape[1]
        r = Receipt(self.node_key.peer_id, model or self.model_uid, int(self.epoch), start, end, position, n,
                    chain_state(states, position + n), output_hash(out))
        return {"epoch": r.epoch, "sig": self.node_key.sign(r.message()).hex()}

    def chain(self, session_id: str) -> tuple[torch.dtype, bytes] | None:
        """The session's input chain states `c_0..c_n` (hoster.prefix_cache keys its entries by them)."""
        entry = self._chains.get(session_id)
        return None if entry is None else (entry[0], bytes(entry[1]))

    def seed(self, session_id: str, dtype: torch.dtype, states: bytes) -> None:
        """Start a forked session's chain from its cached prefix's states (the same input rows)."""
        self._chains[session_id] = (dtype, bytearray(states))

    def close(self, session_id: str) -> None:
        self._chains.pop(session_id, None)

    @property
    def sessions(self) -> int:
        return len(self._chains)
