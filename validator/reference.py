"""Reference outputs: a validator that holds the weights runs the probe blocks itself.

With `--model` pointing at a checkpoint with weights, the validator computes `block_i(x_i)`
for the probe blocks (transformers' own layer classes via `subnet.model.blocks`, the node's
`--dtype`, float32 out, exactly the hosters' probe path), commits `sha256(salt || outputs)`
in the hoster commit window (before any hoster reveals, so neither side can copy the other)
and reveals the outputs with the hosters. Every node then scores with the same revealed
references (`consensus.scoring.score_hosters(references=...)`), so the scores stay
bit-identical between validators that hold the weights and those that do not.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from dataclasses import dataclass, field

import torch

from consensus.commit import commitment, new_salt
from consensus.encoding import encode_block_outputs, encode_tensor
from consensus.phases import COMMIT_END, COMMIT_START, REVEAL_END, REVEAL_START, RecordKind
from consensus.probe import ProbeSpec, probe_input
from keys.node_key import NodeKey
from subnet.logs import event
from subnet.model.blocks import INDEX_FILE, SINGLE_FILE, load_blocks
from subnet.swarm.chain_view import EpochPosition
from subnet.swarm.record_store import record_ttl, reveal_parts, store_record, store_reveal
from validator.weights import ValidatorWeights

log = logging.getLogger(__name__)


def holds_weights(model: str | None) -> bool:
    """Whether `model` is a local checkpoint directory with weights (a config-only directory is not)."""
    return bool(model) and os.path.isdir(model) and any(
        os.path.exists(os.path.join(model, f)) for f in (INDEX_FILE, SINGLE_FILE))


class ReferenceModel:
    """The model's decoder blocks, loaded on first use (a validator without weights never loads them)."""

    def __init__(self, model_path: str, num_blocks: int, dtype: str = "float32", *,
                 weights: ValidatorWeights | None = None):
        self.model_path, self.num_blocks, self.dtype = model_path, num_blocks, dtype
        self._span = None
        self._lock = threading.Lock()
        # the node's shared copy (`validator/weights.py`), used when it is in this dtype: one load per validator
        self.weights = weights if weights is not None and weights.dtype == dtype else None
        if self.weights is not None:
            self._lock = self.weights.lock

    def outputs(self, spec: ProbeSpec, blocks: list[int]) -> dict[int, torch.Tensor]:
        """block_i(x_i) for each block, float32 (the probe dtype), on the CPU."""
        with self._lock:
            if self._span is None:
                self._span = self.weights.blocks() if self.weights is not None else \
                    load_blocks(self.model_path, 0, self.num_blocks, self.dtype, progress=False)
            out = {}
            for b in blocks:
                x = probe_input(spec, b).to(self._span.dtype)
                with torch.inference_mode():
                    y = self._span(x, start=b, end=b + 1)
                out[b] = y.detach().to("cpu", torch.float32).contiguous()
            return out


@dataclass
class ReferenceEpoch:
    """The reference this validator published in one epoch."""

    blocks: tuple[int, ...] = ()
    outputs: dict[int, bytes] = field(default_factory=dict)
    salt: bytes = b""
    commit: bytes = b""
    committed_block: int | None = None
    revealed_block: int | None = None
    compute_seconds: float = 0.0
    error: str | None = None


class ReferencePublisher:
    """Compute, commit and reveal this validator's reference for each epoch (called from the duty's tick)."""

    def __init__(self, dht, node_key: NodeKey, subnet_id: int, model: ReferenceModel, *,
                 max_blocks: int | None = None):
        self.dht, self.node_key, self.subnet_id, self.model = dht, node_key, subnet_id, model
        self.max_blocks = max_blocks
        self.epochs: dict[int, ReferenceEpoch] = {}

    def tick(self, epoch: int, spec: ProbeSpec | None, view: EpochPosition, keep: int = 32) -> None:
        p = view.progress
        st = self.epochs.get(epoch)
        if st is None:
            st = self.epochs[epoch] = ReferenceEpoch()
            for old in sorted(self.epochs)[:-keep]:
                del self.epochs[old]
        if spec is not None and COMMIT_START <= p < COMMIT_END and not st.outputs and st.error is None:
            self._compute(st, epoch, spec)
        if COMMIT_START <= p < COMMIT_END and st.outputs and st.committed_block is None:
            payload = {"commit": st.commit.hex(), "blocks": list(st.blocks), "parts": reveal_parts(self.body(st)),
                       **self.commit_extra()}
            if store_record(self.dht, self.node_key, self.subnet_id, epoch, RecordKind.REFERENCE_COMMIT, payload,
                            block=view.block, ttl=record_ttl(view)):
                st.committed_block = view.block
                event(log, "reference_committed", epoch=epoch, block=view.block, blocks=len(st.blocks))
        if REVEAL_START <= p < REVEAL_END and st.committed_block is not None and st.revealed_block is None:
            if store_reveal(self.dht, self.node_key, self.subnet_id, epoch, RecordKind.REFERENCE_REVEAL,
                            self.body(st), block=view.block, ttl=record_ttl(view)):
                st.revealed_block = view.block
                event(log, "reference_revealed", epoch=epoch, block=view.block)

    def blocks_for(self, spec: ProbeSpec) -> list[int]:
        """The probe blocks to reference: all, or `max_blocks` of them drawn from the probe seed."""
        blocks = list(spec.blocks)
        if self.max_blocks is None or self.max_blocks >= len(blocks):
            return blocks
        gen = torch.Generator().manual_seed(int.from_bytes(spec.seed[:8], "big") & ((1 << 63) - 1))
        picked = torch.randperm(len(blocks), generator=gen)[: self.max_blocks].tolist()
        return sorted(blocks[i] for i in picked)

    def _compute(self, st: ReferenceEpoch, epoch: int, spec: ProbeSpec) -> None:
        t0 = time.perf_counter()
        try:
            blocks = self.blocks_for(spec)
            outs = self.encode_outputs(spec, blocks)
        except Exception as e:  # a broken checkpoint must not stop the validator's other work
            st.error = f"{type(e).__name__}: {e}"[:200]
            event(log, "reference_failed", logging.WARNING, epoch=epoch, error=st.error)
            return
        st.compute_seconds = time.perf_counter() - t0
        st.blocks, st.outputs, st.salt = tuple(blocks), outs, new_salt()
        st.commit = commitment(st.salt, encode_block_outputs(self.subnet_id, epoch, self.node_key.peer_id, outs))
        event(log, "reference_computed", epoch=epoch, blocks=len(blocks), seconds=round(st.compute_seconds, 3))

    def commit_extra(self) -> dict:
        """Extra signed commit fields: the precision class the reference is computed in (its dtype)."""
        return {"precision": [str(self.model.dtype).replace("torch.", "")]}

    def encode_outputs(self, spec: ProbeSpec, blocks: list[int]) -> dict[int, bytes]:
        """The committed blob of each block (validator/class_reference.py: one tensor per class)."""
        return {b: encode_tensor(t) for b, t in self.model.outputs(spec, blocks).items()}

    @staticmethod
    def body(st: ReferenceEpoch) -> dict:
        return {"salt": st.salt.hex(),
                "outputs": {str(b): base64.b64encode(d).decode() for b, d in sorted(st.outputs.items())}}
