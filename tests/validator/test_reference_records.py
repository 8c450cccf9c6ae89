"""Admission of reference records: Validator class only, hoster windows, output-commit schema."""

from __future__ import annotations

import pytest

from subnet.swarm.epoch_records import ConsensusRecordError, check_reveal_body, consensus_key, key_id_bytes
from subnet.swarm.records import seal
from tests.validator.test_consensus_records import BPE, HOST, VAL, at, commit_payload, policy


def test_reference_commit_needs_validator_class_and_the_commit_window():
    p = policy(at(5, 6))
    key = key_id_bytes(consensus_key(7, 5, "reference_commit"))
    ok = seal(VAL, "reference_commit", commit_payload(5, 5 * BPE + 4))
    assert p.check(ok, VAL.peer_id, key_bytes=key).kind == "reference_commit"
    with pytest.raises(ConsensusRecordError, match="class"):
        p.check(seal(HOST, "reference_commit", commit_payload(5, 5 * BPE + 4)), HOST.peer_id, key_bytes=key)
    with pytest.raises(ConsensusRecordError, match="window"):  # written in the score window: too late
        late = policy(at(5, 15))
        late.check(seal(VAL, "reference_commit", commit_payload(5, 5 * BPE + 14)), VAL.peer_id, key_bytes=key)
    with pytest.raises(ConsensusRecordError, match="another key"):  # a reference replayed as a hoster commit
        p.check(ok, VAL.peer_id, key_bytes=key_id_bytes(consensus_key(7, 5, "hoster_commit")))


def test_reference_reveal_parts_and_body():
    p = policy(at(5, 10))
    part = {"subnet": 7, "epoch": 5, "block": 5 * BPE + 10, "part": 0, "parts": 1, "data": "x"}
    key = key_id_bytes(consensus_key(7, 5, "reference_reveal", 0))
    assert p.check(seal(VAL, "reference_reveal", part), VAL.peer_id, key_bytes=key).payload["part"] == 0
    body = {"salt": "00" * 16, "outputs": {"3": "AAAA"}}
    assert check_reveal_body("reference_reveal", body, 5) is body
    with pytest.raises(ConsensusRecordError):
        check_reveal_body("reference_reveal", {"salt": "00" * 16, "outputs": {"x": 1}}, 5)
