"""Validators check evidence by recomputation; bad evidence is rejected with a log line and
changes no score (real hivemind DHT peers with the evidence record validator; the chain's
node list is a fixed registry here, the devnet version is tests/validator/test_accountable_serving.py)."""

from __future__ import annotations

import logging

import pytest
import torch
from hivemind.utils import get_dht_time

from chain.types import NodeClass, SubnetNode
from consensus.evidence import Evidence, Receipt, chain_of, encode_evidence, output_hash
from keys import NodeKey
from subnet.model.blocks import model_uid
from subnet.swarm.chain_view import EpochPosition
from subnet.swarm.dht import start_dht, visible_maddrs
from subnet.swarm.evidence_records import (
    KIND,
    EvidencePolicy,
    EvidenceRecordError,
    EvidenceRecordValidator,
    evidence_key,
    evidence_subkey,
    fetch_evidence,
    publish_evidence,
)
from subnet.swarm.records import seal
from validator.evidence import EvidenceChecker, local_reference

SUBNET, EPOCH = 1, 5
HOSTER, OTHER, OUTSIDER = NodeKey.from_seed(b"h" * 32), NodeKey.from_seed(b"o" * 32), NodeKey.from_seed(b"x" * 32)


class FixedRegistry:
    """The chain facts evidence admission reads: epoch EPOCH, HOSTER and OTHER registered (Idle)."""

    subnet_id = SUBNET

    def view(self) -> EpochPosition:
        return EpochPosition(EPOCH, EPOCH * 20 + 5, 20, 5)

    def node(self, peer_id: str):
        ids = {HOSTER.peer_id: 1, OTHER.peer_id: 2}
        if peer_id not in ids:
            return None
        return SubnetNode(SUBNET, ids[peer_id], "c", "h", peer_id, NodeClass.IDLE, 100, 1.0)


@pytest.fixture(scope="module")
def reference(tiny_llama):
    return local_reference(tiny_llama, 8)


def make_evidence(key: NodeKey, uid: str, reference, *, lie: float, epoch: int = EPOCH, n: int = 5) -> bytes:
    prefix = torch.randn(1, n, 64, generator=torch.Generator().manual_seed(n))
    out = reference(prefix, 2, 6)[:, 3:]
    out = out + lie * out.norm() / out.numel() ** 0.5 * torch.randn(out.shape, generator=torch.Generator())
    r = Receipt(key.peer_id, uid, epoch, 2, 6, 3, n - 3, chain_of(prefix), output_hash(out))
    r = Receipt(**{**r.__dict__, "signature": key.sign(r.message())})
    return encode_evidence(Evidence(r, prefix, out))


def test_checker_accepts_only_a_signed_lie_about_a_registered_hoster(tiny_llama, reference, caplog):
    uid = model_uid(tiny_llama)
    checker = EvidenceChecker(None, EvidencePolicy(SUBNET, FixedRegistry()), uid, reference)
    caplog.set_level(logging.WARNING, logger="validator.evidence")
    assert checker.check(EPOCH, "r", HOSTER.peer_id, make_evidence(HOSTER, uid, reference, lie=0.05)) == HOSTER.peer_id
    bad = {
        "the output recomputes as honest": make_evidence(HOSTER, uid, reference, lie=0.0),
        "not a registered hoster": make_evidence(OUTSIDER, uid, reference, lie=0.05),
        "not JSON": b"\x00junk",
        "about model": make_evidence(HOSTER, "other-model", reference, lie=0.05),
        "signer or epoch": make_evidence(HOSTER, uid, reference, lie=0.05, epoch=EPOCH - 1),
    }
    for reason, body in bad.items():
        accused = OUTSIDER.peer_id if "registered" in reason else HOSTER.peer_id
        caplog.clear()
        assert checker.check(EPOCH, "r", accused, body) is None
        assert any(r.getMessage() == "evidence_rejected" and reason in r.fields["reason"] for r in caplog.records), \
            (reason, [getattr(r, "fields", None) for r in caplog.records])
    forged = bytearray(make_evidence(HOSTER, uid, reference, lie=0.05))
    i = forged.index(b'"sig":"') + 7
    forged[i:i + 2] = b"00" if forged[i:i + 2] != b"00" else b"11"
    assert checker.check(EPOCH, "r", HOSTER.peer_id, bytes(forged)) is None


def test_policy_rejects_junk_replays_oversize_and_far_expiry():
    policy = EvidencePolicy(SUBNET, FixedRegistry())
    digest = "ab" * 32
    good = {"subnet": SUBNET, "epoch": EPOCH, "accused": HOSTER.peer_id, "digest": digest, "part": 0, "parts": 1,
            "data": "x"}
    sub = evidence_subkey(OTHER.peer_id, digest)
    assert policy.check(seal(OTHER, KIND, good), sub).peer_id == OTHER.peer_id
    cases = [
        (seal(OTHER, KIND, {**good, "accused": OUTSIDER.peer_id}), sub, {}),  # unregistered accused
        (seal(OTHER, KIND, {**good, "epoch": EPOCH - 3}), sub, {}),  # too old
        (seal(OTHER, KIND, {**good, "data": "x" * 9000}), sub, {}),  # oversize
        (seal(OTHER, KIND, {**good, "part": 1}), sub, {}),  # part beyond count
        (seal(OTHER, KIND, {**good, "subnet": 2}), sub, {}),
        (seal(OTHER, KIND, good), evidence_subkey(HOSTER.peer_id, digest), {}),  # subkey of someone else
        (seal(OTHER, "probe", good), sub, {}),
        (b"junk", sub, {}),
        (seal(OTHER, KIND, good), sub, {"key_bytes": b"another key"}),
        (seal(OTHER, KIND, good), sub, {"expiration_time": get_dht_time() + 10 * 3600}),
    ]
    for value, subkey, kw in cases:
        with pytest.raises(EvidenceRecordError):
            policy.check(value, subkey, **kw)


def test_evidence_through_the_dht_zeroes_only_the_liar(tiny_llama, reference, caplog):
    uid = model_uid(tiny_llama)
    registry = FixedRegistry()
    dhts = []
    try:
        for _ in range(2):
            dhts.append(start_dht(NodeKey.generate(), visible_maddrs(dhts[0]) if dhts else [],
                                  record_validators=[EvidenceRecordValidator(EvidencePolicy(SUBNET, registry))]))
        reporter_dht = dhts[1]
        reporter = NodeKey.generate()
        assert publish_evidence(reporter_dht, reporter, SUBNET, EPOCH, HOSTER.peer_id,
                                make_evidence(HOSTER, uid, reference, lie=0.05, n=40))
        assert publish_evidence(reporter_dht, NodeKey.generate(), SUBNET, EPOCH, OTHER.peer_id,
                                make_evidence(OTHER, uid, reference, lie=0.0, n=7))  # honest: rejected by validators
        # storers refuse evidence about an unregistered node and junk under an evidence key
        assert not publish_evidence(reporter_dht, reporter, SUBNET, EPOCH, OUTSIDER.peer_id,
                                    make_evidence(OUTSIDER, uid, reference, lie=0.05))
        junk = reporter_dht.store(evidence_key(SUBNET, EPOCH, 0), b"junk" * 100, get_dht_time() + 60,
                                  subkey="x", return_future=True).result(30)
        assert not any(junk.values()) if isinstance(junk, dict) else not junk
        found = fetch_evidence(dhts[0], EvidencePolicy(SUBNET, registry), EPOCH)
        assert sorted(a for _, a, _, _ in found) == sorted([HOSTER.peer_id, OTHER.peer_id])
        caplog.set_level(logging.WARNING, logger="validator.evidence")
        checker = EvidenceChecker(dhts[0], EvidencePolicy(SUBNET, registry), uid, reference)
        assert checker.guilty(EPOCH) == {HOSTER.peer_id}
        assert checker.guilty(EPOCH + 1) == {HOSTER.peer_id}  # receipt epoch e-1 counts in e's scoring
        assert checker.guilty(EPOCH + 2) == set()
        assert any(r.getMessage() == "evidence_rejected" for r in caplog.records)
    finally:
        for d in dhts:
            d.shutdown()
