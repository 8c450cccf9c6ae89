"""End to end on 127.0.0.1 (devnet chain process, hivemind DHT processes): hosters of different
precision classes on overlapping blocks, scored within their declared class.

An honest int8 hoster, an honest float32 hoster and a hoster that serves nf4 but declares int8 in
its signed commit serve every block; a fourth validator holds the weights and publishes references
in float32 and int8. Every validator scores both honest hosters >= 0.99 and the liar <= 0.05, and
all of them attest the same integers.

The liar is a test-only `HosterDuty` subclass defined here (`declared_precision`): production code
declares what its blocks really run.
"""

from __future__ import annotations

import pytest

from hoster.duty import HosterDuty
from tests.validator.support import ChainNet, Node
from tests.validator.test_e2e_reference import BLOCK_TIME, EPOCH_LENGTH, _check_attested
from validator.class_reference import ClassReferenceModel, ClassReferencePublisher

pytestmark = pytest.mark.slow

NUM_BLOCKS = 4
HIDDEN = 128  # every linear of this model has a multiple of 64 x 256 weights: nf4 quantizes all of them


class Int8ClaimingDuty(HosterDuty):
    """Test-only: declares int8 whatever the blocks run (the hoster serves nf4: cheaper, less exact)."""

    def declared_precision(self) -> str:
        return "int8"


@pytest.fixture(scope="module")
def nf4_llama(tiny_model_factory) -> str:
    return tiny_model_factory("llama", num_layers=NUM_BLOCKS, hidden_size=HIDDEN, intermediate_size=256,
                              num_kv_heads=4)


def test_quantized_hosters_scored_within_their_class(tmp_path, nf4_llama):
    net = ChainNet(tmp_path, block_time=BLOCK_TIME, epoch_length=EPOCH_LENGTH)
    nodes: list[Node] = []
    try:
        ops = [net.add_operator() for _ in range(4)]
        net.activate()
        peers: list[str] = []
        for op in ops:
            nodes.append(Node(net, op, peers))
            peers = peers or nodes[0].maddrs
        int8, full, liar, validator = nodes
        shape = dict(hidden_size=HIDDEN, num_blocks=NUM_BLOCKS)
        int8.start_roles(model=nf4_llama, blocks=(0, NUM_BLOCKS), hoster_kw={"quant": "int8"}, **shape)
        full.start_roles(model=nf4_llama, blocks=(0, NUM_BLOCKS), **shape)
        liar.start_roles(model=nf4_llama, blocks=(0, NUM_BLOCKS), hoster_kw={"quant": "nf4"},
                         hoster_duty_cls=Int8ClaimingDuty, **shape)
        ref = ClassReferencePublisher(validator.dht, validator.op.node_key, net.subnet_id,
                                      ClassReferenceModel(nf4_llama, NUM_BLOCKS, ["float32", "int8"]))
        validator.start_roles(reference=ref, **shape)
        hosters = (int8, full, liar)

        start = net.epoch_info().epoch + 1
        found: list[int] = []
        for e in range(start, start + 6):
            net.wait_epoch(e + 2, timeout=EPOCH_LENGTH * BLOCK_TIME * 8)
            reports = [n.validator.reports.get(e) for n in nodes]
            if all(r is not None and all(r["hoster_reveals"].get(h.peer_id) == "valid" for h in hosters)
                   and r["reference_reveals"].get(validator.peer_id) == "valid" for r in reports):
                found.append(e)
            if len(found) == 2:
                break
        assert len(found) == 2, f"only epochs {found} had every hoster's and the reference's reveals"
        for e in found:
            for n in nodes:
                rep = n.validator.reports[e]
                assert rep["hoster_classes"] == {int8.peer_id: "int8", full.peer_id: "float32",
                                                 liar.peer_id: "int8"}, rep["hoster_classes"]
                assert rep["disputed_blocks"] == {} and rep["referenced_blocks"], rep
                scores = rep["hoster_scores"]
                assert scores[int8.peer_id] >= 0.99 and scores[full.peer_id] >= 0.99, scores
                assert scores[liar.peer_id] <= 0.05, scores
        _check_attested(net, nodes, found)
    finally:
        for n in nodes:
            n.stop()
        net.close()
