"""References in several precision classes (validator/class_reference.py): the int8 reference equals an
int8 hoster's probe path, blobs split back per class, malformed reveals and options are refused."""

from __future__ import annotations

import pytest
import torch

from consensus.probe import make_probe_spec
from hoster.backend import Backend
from hoster.duty import HosterDuty
from keys.node_key import NodeKey
from subnet.model.blocks import load_blocks
from subnet.swarm.records import OpenedRecord
from validator.class_reference import (
    ClassReferenceModel,
    ClassReferencePublisher,
    check_reference_precisions,
    parse_reference_precisions,
    verify_reference_reveals,
)
from validator.reference import ReferenceEpoch
from validator.verify import VALID

SPEC = make_probe_spec(bytes(range(32)), 1, 3, hidden=64, num_blocks=8)


def test_int8_reference_equals_an_int8_hoster_probe_path(tiny_llama):
    ref = ClassReferenceModel(tiny_llama, 8, ["int8", "float32"]).class_outputs(SPEC, list(SPEC.blocks))
    backend = Backend(load_blocks(tiny_llama, 2, 6, progress=False, quant="int8"))
    try:
        duty = HosterDuty.__new__(HosterDuty)  # only run_block / declared_precision
        duty.backend = backend
        assert duty.declared_precision() == "int8"
        for b in (b for b in SPEC.blocks if 2 <= b < 6):
            out = duty.run_block(SPEC, b)
            assert torch.equal(out, ref["int8"][b]), b
            assert not torch.allclose(out, ref["float32"][b], rtol=1e-3, atol=1e-3)  # another class
    finally:
        backend.shutdown()


def _published(tiny_llama, classes):
    key = NodeKey.generate()
    pub = ClassReferencePublisher(None, key, 1, ClassReferenceModel(tiny_llama, 8, classes))
    st = ReferenceEpoch()
    pub._compute(st, SPEC.epoch, SPEC)
    assert st.error is None
    payload = {"commit": st.commit.hex(), "blocks": list(st.blocks), "parts": 1, **pub.commit_extra()}
    return key.peer_id, OpenedRecord(key.peer_id, "reference_commit", payload, b"", 0), pub.body(st), pub


def test_blobs_split_back_per_class_and_defects_are_refused(tiny_llama):
    peer, commit, body, pub = _published(tiny_llama, ["float32", "int8"])
    assert commit.payload["precision"] == ["float32", "int8"]
    by_class, status = verify_reference_reveals(1, SPEC.epoch, SPEC, {peer: commit}, {peer: body})
    assert status == {peer: VALID}
    expected = pub.model.class_outputs(SPEC, list(SPEC.blocks))
    for cls in ("float32", "int8"):
        assert set(by_class[cls][peer]) == set(SPEC.blocks)
        assert all(torch.equal(by_class[cls][peer][b], expected[cls][b]) for b in SPEC.blocks)
    # declaring a third class its blobs do not hold, or one class for two-tensor blobs: invalid
    for claim in (["float32", "int8", "nf4"], ["float32"]):
        bad = OpenedRecord(peer, commit.kind, {**commit.payload, "precision": claim}, b"", 0)
        _, status = verify_reference_reveals(1, SPEC.epoch, SPEC, {peer: bad}, {peer: body})
        assert status[peer].startswith("invalid"), status
    # a blob cut short no longer opens the commit
    b0 = str(SPEC.blocks[0])
    cut = {**body, "outputs": {**body["outputs"], b0: body["outputs"][b0][:-8]}}
    _, status = verify_reference_reveals(1, SPEC.epoch, SPEC, {peer: commit}, {peer: cut})
    assert status[peer].startswith("invalid")


def test_reference_precision_options_fail_in_one_line():
    assert parse_reference_precisions(" float32, INT8 ") == ["float32", "int8"]
    for bad in ("", "int8,int8", "fp8", "float32,,int4"):
        with pytest.raises(ValueError, match="--reference-precisions"):
            parse_reference_precisions(bad)
    assert check_reference_precisions("float32,int8") == ["float32", "int8"]
    with pytest.raises(ValueError, match="--quant int8 cannot run"):
        check_reference_precisions("int8", device="meta")


def test_commit_admission_checks_the_declared_precision():
    from subnet.swarm.epoch_records import ConsensusRecordError, check_payload_schema

    base = {"subnet": 1, "epoch": 2, "block": 3, "commit": "ab" * 32, "blocks": [0, 2], "parts": 1}
    check_payload_schema("hoster_commit", base)  # no declaration: float32
    check_payload_schema("hoster_commit", {**base, "precision": "nf4"})
    check_payload_schema("reference_commit", {**base, "precision": ["float32", "int8"]})
    for kind, bad in (("hoster_commit", ["int8"]), ("hoster_commit", "int4"), ("reference_commit", "int8"),
                      ("reference_commit", ["int8", "int8"])):
        with pytest.raises(ConsensusRecordError):
            check_payload_schema(kind, {**base, "precision": bad})
    score_commit = {k: v for k, v in base.items() if k != "blocks"}
    check_payload_schema("validator_commit", score_commit)
    with pytest.raises(ConsensusRecordError):  # score commits declare no precision
        check_payload_schema("validator_commit", {**score_commit, "precision": "int8"})


def test_node_refuses_bad_reference_precisions_in_one_line(tiny_llama):
    from subnet.node.assembly import Node, NodeOptions
    from subnet.node.errors import NodeConfigError

    base = dict(validator=True, chain="http://127.0.0.1:1", subnet_id=1, account_key="a.json", model=tiny_llama)
    for bad, needle in (("int4", "--reference-precisions 'int4'"), ("float32,nf4", None)):
        opts = NodeOptions(**base, reference_precisions=bad, device="cpu")
        if needle is None:
            Node(opts)  # a valid list passes the checks (nothing is started by the constructor)
            continue
        with pytest.raises(NodeConfigError, match=needle) as err:
            Node(opts)
        assert "\n" not in str(err.value)
