"""The hoster's epoch duty: probe -> outputs -> commit -> reveal.

Every epoch: fetch the probe the elected validator posted, check it against the seed from
the chain randomness, run each probe block input through the served block alone (the
`run_span` path that `rpc_forward` uses: same code, same dtype), commit
`sha256(salt || canonical outputs)` inside the commit window and reveal salt + outputs inside
the reveal window. It runs in its own thread; the model work goes through the backend's
compute queue between inference steps, so serving is never blocked by the duty.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from chain.base import Chain
from consensus.commit import commitment, new_salt
from consensus.encoding import encode_block_outputs, encode_tensor
from consensus.phases import COMMIT_END, COMMIT_START, REVEAL_END, REVEAL_START, RecordKind
from consensus.precision import precision_class
from consensus.probe import ProbeSpec, make_probe_spec, probe_input
from keys.node_key import NodeKey
from subnet.logs import event
from subnet.swarm.chain_view import ChainRegistry, EpochPosition
from subnet.swarm.epoch_loop import EpochDutyLoop
from subnet.swarm.record_admission import ConsensusRecordPolicy
from subnet.swarm.record_store import (
    DHTUnavailableError,
    fetch_probe,
    record_ttl,
    reveal_parts,
    store_record,
    store_reveal,
)

log = logging.getLogger(__name__)


@dataclass
class HosterEpoch:
    """What the hoster did in one epoch (also its report)."""

    epoch: int
    probe_seed: str | None = None
    probe_poster: str | None = None
    blocks: tuple[int, ...] = ()
    outputs: dict[int, bytes] = field(default_factory=dict)
    salt: bytes = b""
    commit: bytes = b""
    committed_block: int | None = None
    revealed_block: int | None = None
    compute_seconds: float = 0.0
    error: str | None = None

    def report(self) -> dict:
        return {
            "epoch": self.epoch,
            "probe_seed": self.probe_seed,
            "probe_poster": self.probe_poster,
            "blocks": list(self.blocks),
            "commit": self.commit.hex() or None,
            "committed_block": self.committed_block,
            "revealed_block": self.revealed_block,
            "compute_seconds": round(self.compute_seconds, 4),
            "error": self.error,
        }


class HosterDuty(EpochDutyLoop):
    """Background probe/commit/reveal loop of one hoster; `start()` / `stop()`.

    `backend` is anything with `run_span(hidden, start, end)` (a `hoster.server.Hoster` or a
    `hoster.backend.Backend`); `served_blocks()` returns the current `[start, end)` (default:
    the backend's `start_block/end_block` or `start/end`, so a rebalanced range is picked up).
    `hidden_size`/`num_blocks` describe the model (for the seed-derived probe check).
    """

    name = "hoster-duty"

    def __init__(self, dht, chain: Chain, node_key: NodeKey, backend, subnet_id: int, *, hidden_size: int,
                 num_blocks: int, served_blocks: Callable[[], tuple[int, int]] | None = None,
                 policy: ConsensusRecordPolicy | None = None, poll_interval: float | None = None,
                 keep_reports: int = 32):
        self.dht, self.chain, self.node_key, self.backend = dht, chain, node_key, backend
        self.subnet_id = subnet_id
        self.hidden_size, self.num_blocks = hidden_size, num_blocks
        self._served = served_blocks or self._default_served
        self.policy = policy or ConsensusRecordPolicy(subnet_id, ChainRegistry(lambda: chain, subnet_id))
        self.poll_interval = poll_interval
        self.keep_reports = keep_reports
        self.epochs: dict[int, HosterEpoch] = {}
        self._init_loop()

    def _default_served(self) -> tuple[int, int]:
        b = self.backend
        if hasattr(b, "start_block"):
            return int(b.start_block), int(b.end_block)
        return int(b.start), int(b.end)

    # ---- one step ----------------------------------------------------------------------------

    def tick(self, view: EpochPosition) -> None:
        """Advance the duty for the chain position `view` (idempotent within a phase)."""
        e, p = view.epoch, view.progress
        receipts = getattr(getattr(self.backend, "servicer", None), "receipts", None)
        if receipts is not None:
            receipts.epoch = e  # step receipts are bound to the chain epoch (hoster.receipts)
        st = self.epochs.get(e)
        if st is None:
            st = self.epochs[e] = HosterEpoch(e)
            for old in sorted(self.epochs)[: -self.keep_reports]:
                del self.epochs[old]
        if p < COMMIT_END and not st.outputs and st.error is None:
            try:
                self._compute(st)
            except DHTUnavailableError:
                raise  # transient: retry next tick
            except Exception as e:  # e.g. the backend is shutting down: skip this epoch, keep running
                st.error = f"{type(e).__name__}: {e}"[:200]
                event(log, "probe_run_failed", logging.WARNING, epoch=e, error=st.error)
        if COMMIT_START <= p < COMMIT_END and st.outputs and st.committed_block is None:
            self._commit(st, view)
        if REVEAL_START <= p < REVEAL_END and st.committed_block is not None and st.revealed_block is None:
            self._reveal(st, view)

    def expected_probe(self, epoch: int) -> ProbeSpec:
        randomness = self.policy.registry.randomness(epoch)
        return make_probe_spec(randomness, self.subnet_id, epoch, hidden=self.hidden_size, num_blocks=self.num_blocks)

    def _compute(self, st: HosterEpoch) -> None:
        expected = self.expected_probe(st.epoch)
        found = fetch_probe(self.dht, self.policy, expected)
        if found is None:
            return  # not posted yet (or only bad ones): try again next tick
        spec, poster = found
        start, end = self._served()
        blocks = tuple(b for b in range(start, end) if b in spec.blocks)
        t0 = time.perf_counter()
        outputs = {b: encode_tensor(self.run_block(spec, b)) for b in blocks}
        st.compute_seconds = time.perf_counter() - t0
        st.probe_seed, st.probe_poster, st.blocks, st.outputs = spec.seed.hex(), poster, blocks, outputs
        st.salt = new_salt()
        st.commit = commitment(st.salt, encode_block_outputs(self.subnet_id, st.epoch, self.node_key.peer_id, outputs))
        event(log, "probe_run", epoch=st.epoch, blocks=f"{start}:{end}", seconds=round(st.compute_seconds, 3),
              poster=poster)

    def run_block(self, spec: ProbeSpec, block: int) -> torch.Tensor:
        """block_i(x_i) through the serving path; float32 out (the probe dtype)."""
        out = self.backend.run_span(probe_input(spec, block), block, block + 1)
        return out.detach().to("cpu", torch.float32).contiguous()

    def _commit(self, st: HosterEpoch, view: EpochPosition) -> None:
        payload = {"commit": st.commit.hex(), "blocks": list(st.blocks), "parts": reveal_parts(self.reveal_body(st)),
                   "precision": self.declared_precision()}
        if store_record(self.dht, self.node_key, self.subnet_id, st.epoch, RecordKind.HOSTER_COMMIT, payload,
                        block=view.block, ttl=record_ttl(view)):
            st.committed_block = view.block
            event(log, "hoster_committed", epoch=st.epoch, block=view.block, blocks=len(st.blocks))

    def declared_precision(self) -> str:
        """The precision class this hoster's signed commit declares: its outputs are scored within it."""
        b = getattr(self.backend, "span", self.backend)
        dtype = str(getattr(b, "dtype", "float32")).replace("torch.", "")
        return precision_class(dtype, getattr(self.backend, "quant", None) or getattr(b, "quant", None) or "none")

    def reveal_body(self, st: HosterEpoch) -> dict:
        return {"salt": st.salt.hex(),
                "outputs": {str(b): base64.b64encode(data).decode() for b, data in sorted(st.outputs.items())}}

    def _reveal(self, st: HosterEpoch, view: EpochPosition) -> None:
        if store_reveal(self.dht, self.node_key, self.subnet_id, st.epoch, RecordKind.HOSTER_REVEAL,
                        self.reveal_body(st), block=view.block, ttl=record_ttl(view)):
            st.revealed_block = view.block
            event(log, "hoster_revealed", epoch=st.epoch, block=view.block)
