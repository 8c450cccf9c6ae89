"""ValidatorJournal: the epoch facts a validator needs after a restart survive it, intact or not at all."""

from __future__ import annotations

import json
import os

from validator.duty import ValidatorEpoch
from validator.journal import ValidatorJournal, journal_path


def _epoch(e: int) -> ValidatorEpoch:
    st = ValidatorEpoch(e)
    st.score_salt, st.score_commit = os.urandom(32), os.urandom(32)
    st.hoster_fixed = {"12D3KooWa": 10**18, "12D3KooWb": 5}
    st.proposal = [(1, 10**18), (3, 2**100)]
    st.node_classes = {1: 4, 3: 3}
    st.score_committed_block = 40 * e + 13
    return st


def test_round_trip_across_instances(tmp_path):
    path = journal_path(tmp_path, 7)
    j = ValidatorJournal(path, peer_id="P", subnet_id=7)
    st = _epoch(5)
    j.save(st)
    st6 = ValidatorEpoch(6)
    st6.proposing, st6.proposed, st6.attested = True, True, True
    j.save(st6)
    again = ValidatorJournal(path, peer_id="P", subnet_id=7)  # a restarted process
    back = ValidatorEpoch(5)
    assert again.restore(back)
    for f in ("score_salt", "score_commit", "hoster_fixed", "proposal", "node_classes", "score_committed_block"):
        assert getattr(back, f) == getattr(st, f), f
    assert back.score_revealed_block is None and not back.proposed and not back.proposing
    six = ValidatorEpoch(6)
    assert again.restore(six) and six.proposing and six.proposed and six.attested and six.attestation == "proposer"
    assert not again.restore(ValidatorEpoch(4)) and not again.has(4)
    assert not path.with_suffix(".tmp").exists() and oct(path.stat().st_mode & 0o777) == "0o600"


def test_keeps_only_recent_epochs(tmp_path):
    j = ValidatorJournal(tmp_path / "j.json", peer_id="P", subnet_id=1, keep=3)
    for e in range(10):
        j.save(_epoch(e))
    stored = json.loads((tmp_path / "j.json").read_text())["epochs"]
    assert sorted(int(e) for e in stored) == [7, 8, 9]


def test_foreign_or_corrupt_journal_is_set_aside(tmp_path):
    path = tmp_path / "j.json"
    ValidatorJournal(path, peer_id="P", subnet_id=1).save(_epoch(1))
    other = ValidatorJournal(path, peer_id="Q", subnet_id=1)  # another node's file: not trusted
    assert not other.has(1) and not path.exists() and path.with_suffix(".corrupt").exists()
    path.write_text('{"version": 1, "peer_id": "P", "subnet_id": 1, "epochs": {"x"')  # torn by hand
    assert not ValidatorJournal(path, peer_id="P", subnet_id=1).has(1)
    path.write_text('{"version": 1, "peer_id": "P", "subnet_id": 1, "epochs": {"2": {"score_salt": "zz"}}}')
    j = ValidatorJournal(path, peer_id="P", subnet_id=1)
    st = ValidatorEpoch(2)
    assert j.has(2) and not j.restore(st)  # an entry that does not parse is ignored, not half-restored
    assert st.score_salt == b"" and st.proposal is None
