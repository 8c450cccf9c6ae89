"""Evidence against hosters, checked by recomputation (docs/PROTOCOL.md, "Accountable serving").

At its scoring point of epoch `e` every validator reads the evidence published about receipt
epochs `e-1` and `e` (`subnet.swarm.evidence_records`) and checks each body: canonical and
self-consistent (`consensus.evidence.decode_evidence`), the receipt signed by the accused
hoster's node key, about this subnet's model and a registered hoster, and contradicted by
the validator's own recomputation of blocks `[start, end)` on the input prefix (a validator
holds the model: `--model` is required for validators). Evidence that recomputes as honest,
or fails any check, is rejected with a log line and changes nothing. A hoster with valid
evidence scores 0 in the epoch (`consensus.evidence.apply_evidence`).
"""

from __future__ import annotations

import logging

from chain.types import NodeClass
from consensus.evidence import EvidenceError, decode_evidence, is_dishonest, relative_distance
from keys.node_key import public_key_from_peer_id, verify
from subnet.logs import event
from subnet.swarm.evidence_records import MAX_EVIDENCE_BYTES, EvidencePolicy, fetch_evidence
from validator.weights import Reference, ValidatorWeights

log = logging.getLogger(__name__)

def local_reference(model_path: str, num_blocks: int) -> Reference:
    """A reference with its own copy of the blocks, loaded on first use (a node shares one
    `ValidatorWeights` between its duties instead; this is for tools and benchmarks)."""
    return ValidatorWeights(model_path, num_blocks).reference()


class EvidenceChecker:
    """Which hosters have valid evidence against them for an epoch's scoring (verdicts are cached)."""

    def __init__(self, dht, policy: EvidencePolicy, model_uid: str, reference: Reference):
        self.dht, self.policy, self.model_uid, self.reference = dht, policy, model_uid, reference
        self._verdicts: dict[str, str | None] = {}  # digest -> accused if valid, None if rejected

    def guilty(self, epoch: int) -> set[str]:
        """Hosters with valid evidence about receipt epochs `epoch - 1` or `epoch`."""
        out: set[str] = set()
        for e in (epoch - 1, epoch):
            if e < 0:
                continue
            try:
                found = fetch_evidence(self.dht, self.policy, e)
            except Exception as err:  # DHT trouble: no evidence this time (logged)
                event(log, "evidence_fetch_failed", logging.WARNING, epoch=e,
                      error=f"{type(err).__name__}: {err}"[:200])
                continue
            for reporter, accused, digest, body in found:
                if digest not in self._verdicts:
                    if len(self._verdicts) >= 4096:  # bounded: forget the oldest verdicts
                        for old in list(self._verdicts)[:1024]:
                            del self._verdicts[old]
                    self._verdicts[digest] = self.check(e, reporter, accused, body)
                if self._verdicts[digest] is not None:
                    out.add(self._verdicts[digest])
        return out

    def check(self, epoch: int, reporter: str, accused: str, body: bytes) -> str | None:
        """The accused peer id if this evidence body proves a lie, else None (with an `evidence_rejected` line)."""
        try:
            ev = decode_evidence(body, max_bytes=MAX_EVIDENCE_BYTES)
            r = ev.receipt
            if r.peer_id != accused or r.epoch != epoch:
                raise EvidenceError("receipt signer or epoch differs from the record's")
            if r.model != self.model_uid:
                raise EvidenceError(f"receipt is about model {r.model[:64]!r}")
            node = self.policy.registry.node(accused)
            if node is None or node.node_class < NodeClass.IDLE:
                raise EvidenceError("the accused is not a registered hoster")
            if not verify(public_key_from_peer_id(accused), r.message(), r.signature):
                raise EvidenceError("bad receipt signature")
            recomputed = self.reference(ev.prefix, r.start, r.end)[:, r.position:r.position + r.length]
            if not is_dishonest(ev, recomputed):
                raise EvidenceError("the output recomputes as honest")
        except (EvidenceError, ValueError) as e:
            event(log, "evidence_rejected", logging.WARNING, reporter=reporter[-8:], accused=accused[-8:],
                  epoch=epoch, reason=str(e)[:200])
            return None
        event(log, "evidence_accepted", logging.WARNING, accused=accused, epoch=epoch, blocks=f"{r.start}:{r.end}",
              position=r.position, distance=round(relative_distance(ev.output, recomputed), 6))
        return accused
