"""Publishing evidence from the client: a hoster caught by a check is reported in the DHT.

The client signs evidence records with a fresh identity of its own (not its users'); the
evidence's weight is the accused hoster's own signature on the receipt, which every
validator checks by recomputation (`validator.evidence`). Needs the chain registry (the
subnet id; storers admit evidence about registered hosters only).
"""

from __future__ import annotations

import logging

from consensus.evidence import Evidence, encode_evidence
from keys.node_key import NodeKey
from subnet.logs import event
from subnet.swarm.evidence_records import MAX_EVIDENCE_BYTES, publish_evidence

log = logging.getLogger(__name__)


def make_publisher(dht, subnet_id: int, key: NodeKey | None = None):
    """A `Publisher` (blocking; the verifier runs it off the client loop) storing evidence in `dht`."""
    key = key or NodeKey.generate()

    def publish(ev: Evidence) -> None:
        body = encode_evidence(ev)
        if len(body) > MAX_EVIDENCE_BYTES:
            event(log, "evidence_unavailable", hoster=ev.receipt.peer_id[-8:],
                  reason=f"body of {len(body)} bytes exceeds {MAX_EVIDENCE_BYTES}")
            return
        publish_evidence(dht, key, subnet_id, ev.receipt.epoch, ev.receipt.peer_id, body)

    return publish
