"""Reveal verification against commits (plain values; the DHT/e2e tests run it for real)."""

from __future__ import annotations

import base64
import os

import torch

from consensus.commit import commitment, new_salt
from consensus.encoding import encode_block_outputs, encode_score_set, encode_tensor, make_score_set
from consensus.probe import make_probe_spec, probe_input
from keys import NodeKey
from subnet.swarm.records import open_record, seal
from validator.verify import VALID, verify_hoster_reveals, verify_validator_reveals

SID, EPOCH = 3, 9
SPEC = make_probe_spec(os.urandom(32), SID, EPOCH, hidden=16, num_blocks=4)


def hoster_records(key: NodeKey, outputs: dict[int, torch.Tensor], *, commit_as: str | None = None):
    raw = {b: encode_tensor(t) for b, t in outputs.items()}
    salt = new_salt()
    c = commitment(salt, encode_block_outputs(SID, EPOCH, commit_as or key.peer_id, raw))
    commit = open_record(seal(key, "hoster_commit", {"commit": c.hex(), "blocks": sorted(raw), "parts": 1}))
    reveal_payload = {"salt": salt.hex(), "outputs": {str(b): base64.b64encode(d).decode() for b, d in raw.items()}}
    return commit, reveal_payload, reveal_payload


def outputs_for(blocks):
    return {b: torch.tanh(probe_input(SPEC, b)) for b in blocks}


def test_valid_reveal():
    k = NodeKey.generate()
    c, r, _ = hoster_records(k, outputs_for([0, 1]))
    v = verify_hoster_reveals(SID, EPOCH, SPEC, {k.peer_id: c}, {k.peer_id: r})
    assert v.status == {k.peer_id: VALID}
    assert torch.equal(v.values[k.peer_id][1], outputs_for([1])[1])


def test_copycat_cannot_reuse_anothers_commit_and_reveal():
    victim, cat = NodeKey.generate(), NodeKey.generate()
    c, r, payload = hoster_records(victim, outputs_for([0, 1]))
    cat_commit = open_record(seal(cat, "hoster_commit", c.payload))
    cat_reveal = dict(payload)
    v = verify_hoster_reveals(SID, EPOCH, SPEC, {victim.peer_id: c, cat.peer_id: cat_commit},
                              {victim.peer_id: r, cat.peer_id: cat_reveal})
    assert v.status[victim.peer_id] == VALID
    assert "does not match" in v.status[cat.peer_id] and cat.peer_id not in v.values


def test_mismatch_missing_and_orphan_reveals():
    a, b, c_key = NodeKey.generate(), NodeKey.generate(), NodeKey.generate()
    ca, _, pa = hoster_records(a, outputs_for([0]))
    other = outputs_for([0])
    other[0] = other[0] + 1e-3
    tampered = {**pa, "outputs": {"0": base64.b64encode(encode_tensor(other[0])).decode()}}
    cb, _, _ = hoster_records(b, outputs_for([2]))
    _, rc, _ = hoster_records(c_key, outputs_for([3]))
    v = verify_hoster_reveals(SID, EPOCH, SPEC, {a.peer_id: ca, b.peer_id: cb},
                              {a.peer_id: tampered, c_key.peer_id: rc})
    assert "does not match" in v.status[a.peer_id]
    assert v.status[b.peer_id] == "no reveal"
    assert v.status[c_key.peer_id] == "reveal without commit"
    assert v.values == {}
    v = verify_hoster_reveals(SID, EPOCH, SPEC, {b.peer_id: cb}, {}, {b.peer_id: "invalid: incomplete reveal"})
    assert v.status[b.peer_id] == "invalid: incomplete reveal"


def test_block_set_dtype_and_shape_enforced():
    k = NodeKey.generate()
    c, r, payload = hoster_records(k, outputs_for([0, 1]))
    fewer = {**payload, "outputs": {"0": payload["outputs"]["0"]}}
    v = verify_hoster_reveals(SID, EPOCH, SPEC, {k.peer_id: c}, {k.peer_id: fewer})
    assert "blocks differ" in v.status[k.peer_id]
    half = {0: outputs_for([0])[0].to(torch.float16)}
    c2, r2, _ = hoster_records(k, half)
    assert "float16" in verify_hoster_reveals(SID, EPOCH, SPEC, {k.peer_id: c2}, {k.peer_id: r2}).status[k.peer_id]
    wrong_shape = {0: torch.zeros(1, 2, 16)}
    c3, r3, _ = hoster_records(k, wrong_shape)
    assert "shape" in verify_hoster_reveals(SID, EPOCH, SPEC, {k.peer_id: c3}, {k.peer_id: r3}).status[k.peer_id]
    huge = {**payload, "outputs": {"0": "A" * 100_000, "1": payload["outputs"]["1"]}}
    v = verify_hoster_reveals(SID, EPOCH, SPEC, {k.peer_id: c}, {k.peer_id: huge})
    assert "too large" in v.status[k.peer_id]


def test_validator_reveals():
    v1, v2, v3 = NodeKey.generate(), NodeKey.generate(), NodeKey.generate()
    scores = {"hosterA": 10**18, "hosterB": 5 * 10**17}

    def records(key, revealed_scores, epoch=EPOCH - 1):
        salt = new_salt()
        c = commitment(salt, encode_score_set(make_score_set(SID, EPOCH - 1, key.peer_id, scores)))
        commit = open_record(seal(key, "validator_commit", {"commit": c.hex(), "parts": 1}))
        reveal = {"salt": salt.hex(), "scores_epoch": epoch, "scores": revealed_scores}
        return commit, reveal

    c1, r1 = records(v1, scores)
    c2, r2 = records(v2, {**scores, "hosterB": 0})  # reveals something else than it committed
    c3, r3 = records(v3, scores, epoch=EPOCH)
    out = verify_validator_reveals(SID, EPOCH - 1, {v1.peer_id: c1, v2.peer_id: c2, v3.peer_id: c3},
                                   {v1.peer_id: r1, v2.peer_id: r2, v3.peer_id: r3})
    assert out.status[v1.peer_id] == VALID and out.values[v1.peer_id] == scores
    assert "does not match" in out.status[v2.peer_id]
    assert "another epoch" in out.status[v3.peer_id]
