"""Every reputation change the devnet chain makes is recorded with its rule (the reason),
and returned with the epoch's result."""

from __future__ import annotations

import pytest

from chain.types import UNIT


def _changes(tx, sid, epoch) -> dict[int, tuple[float, float, str]]:
    return {c["node_id"]: (c["before"], c["after"], c["reason"])
            for c in tx.state.epoch_result(sid, epoch)["reputation_changes"]}


def test_reasons_for_no_proposal_missing_scores_gain_and_rejection(tx, subnet4):
    sid, ops = subnet4
    pen, gain = tx.state.config.reputation_penalty, tx.state.config.reputation_gain
    ids = sorted(ops)
    e = tx.epoch()
    v = tx.state.elected(sid, e)
    tx.advance_to_epoch(e + 1)  # the elected validator proposed nothing
    assert _changes(tx, sid, e) == {v: (1.0, pytest.approx(1.0 - pen), "no_proposal")}
    detail = tx.state.epoch_result(sid, e)["reputation_changes"][0]["detail"]
    assert "proposed nothing" in detail

    # accepted data that leaves one node out: it is cut, a node below full reputation gains
    e = tx.epoch()
    nid = tx.state.elected(sid, e)
    victim = next(i for i in ids if i not in (nid, v))
    scores = [{"node_id": i, "score": str(UNIT)} for i in ids if i != victim]
    tx(ops[nid].hotkey, "propose_attestation", subnet_id=sid, data=scores)
    for i in ids:
        if i != nid:
            tx(ops[i].hotkey, "attest", subnet_id=sid)
    tx.advance_to_epoch(e + 1)
    changes = _changes(tx, sid, e)
    assert changes[victim] == (1.0, pytest.approx(1.0 - pen), "missing_from_scores")
    if v != victim:
        assert changes[v] == (pytest.approx(1.0 - pen), pytest.approx(1.0 - pen + gain), "scored")
    assert all(i in (victim, v) for i in changes)  # nodes already at 1.0 did not change: no record

    # rejected: the proposer and its lone attestor are cut, each with its own reason
    e = tx.epoch()
    nid = tx.state.elected(sid, e)
    tx(ops[nid].hotkey, "propose_attestation", subnet_id=sid,
       data=[{"node_id": i, "score": str(UNIT)} for i in ids])
    attestor = next(i for i in ids if i != nid)
    tx(ops[attestor].hotkey, "attest", subnet_id=sid)
    tx.advance_to_epoch(e + 1)
    assert tx.state.epoch_result(sid, e)["outcome"] == "rejected"
    reasons = {n: r for n, (_, _, r) in _changes(tx, sid, e).items()}
    assert reasons == {nid: "proposal_rejected", attestor: "attested_rejected"}
