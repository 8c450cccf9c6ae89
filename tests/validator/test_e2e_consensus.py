"""End to end on 127.0.0.1: devnet chain process, hoster nodes serving overlapping block
ranges of a tiny model, validator nodes; several epochs of probe -> commit -> reveal ->
score -> propose -> attest -> rewards, with 100% agreement."""

from __future__ import annotations

import json

import pytest

from chain.types import NodeClass
from tests.validator.support import ChainNet, Node

pytestmark = pytest.mark.slow

BLOCK_TIME = 0.4
EPOCH_LENGTH = 20
RANGES = [(0, 5), (3, 8), (0, 8)]  # every block served by >= 2 hosters


@pytest.fixture(scope="module")
def network(tmp_path_factory, tiny_llama):
    net = ChainNet(tmp_path_factory.mktemp("e2e-chain"), block_time=BLOCK_TIME, epoch_length=EPOCH_LENGTH)
    nodes: list[Node] = []
    try:
        hoster_ops = [net.add_operator() for _ in RANGES]
        validator_ops = [net.add_operator() for _ in range(2)]
        net.activate()
        peers: list[str] = []
        for op in hoster_ops + validator_ops:
            nodes.append(Node(net, op, peers))
            peers = peers or nodes[0].maddrs
        # hosters are Validator-class (initial nodes), so they run the validator duty too
        # (`mesh-node --hoster --validator`): every Validator-class node must attest.
        for node, rng in zip(nodes, RANGES):
            node.start_roles(model=tiny_llama, blocks=rng)
        for node in nodes[len(RANGES):]:
            node.start_roles()
        yield net, nodes
    finally:
        for n in nodes:
            n.stop()
        net.close()


def _wait_results(net: ChainNet, first: int, count: int) -> list[dict]:
    """Epoch results (finalised at the next boundary) for epochs first..first+count-1."""
    net.wait_epoch(first + count + 1, timeout=EPOCH_LENGTH * BLOCK_TIME * (count + 3) * 2)
    return [net.owner.get_epoch_result(net.subnet_id, e) for e in range(first, first + count)]


def test_epochs_proposed_attested_and_paid(network):
    net, nodes = network
    sid = net.subnet_id
    start = net.epoch_info().epoch
    # the first epoch has no previous scores to propose; check the three after it
    first = start + 2
    stakes_before = {n.op.node_id: net.owner.get_node(sid, n.op.node_id).stake for n in nodes}
    results = _wait_results(net, first, 3)
    for r in results:
        assert r is not None, "epoch not finalised"
        assert r["outcome"] == "accepted", r
        assert r["attestors"] == r["validators"] == len(nodes), r  # 100% agreement

    validators = [n.validator for n in nodes]
    hoster_peers = {n.peer_id for n in nodes if n.hoster is not None}
    for e in range(first, first + 3):
        sub = net.owner.get_consensus_submission(sid, e)
        assert sub is not None and len(sub.attestations) == len(nodes)
        scores_epoch = e - 1
        sets = [v.epochs[scores_epoch].proposal for v in validators]
        assert all(s == sets[0] for s in sets), "validators computed different integers"
        assert [(x.node_id, x.score) for x in sub.data] == sets[0]
        rep = validators[-1].reports[scores_epoch]
        assert rep["probe_seed"] is not None
        assert set(rep["hoster_commits"]) == hoster_peers
        assert set(rep["hoster_reveals"].values()) == {"valid"}
        for peer in hoster_peers:
            assert rep["hoster_scores"][peer] > 0.999
        if e > first:  # validators have revealed score sets from the epoch before
            assert len([s for s in rep["validator_reveals"].values() if s == "valid"]) == len(nodes)
            assert all(v > 0.999 for v in rep["validator_scores"].values())

    # rewards follow the on-chain scores: emission split by score / sum
    last = results[-1]
    emission = {int(x["node_id"]): int(x["amount"]) for x in last["rewards"] if x["kind"] == "emission"}
    sub = net.owner.get_consensus_submission(sid, first + 2)
    data = {x.node_id: x.score for x in sub.data}
    total = sum(data.values())
    node_emission = sum(emission.values())
    assert total > 0 and node_emission > 0
    for nid, score in data.items():
        assert abs(emission.get(nid, 0) - node_emission * score // total) <= len(data)
    stakes_after = {n.op.node_id: net.owner.get_node(sid, n.op.node_id).stake for n in nodes}
    assert all(stakes_after[k] > stakes_before[k] for k in stakes_before)
    # hosters also earn the hoster share, so they gain more than pure validators
    hoster_ids = [n.op.node_id for n in nodes if n.hoster is not None]
    validator_ids = [n.op.node_id for n in nodes if n.hoster is None]
    assert min(data[h] for h in hoster_ids) > max(data[v] for v in validator_ids)
    for n in nodes:
        assert net.owner.get_node(sid, n.op.node_id).node_class == NodeClass.VALIDATOR
    # the per-epoch reports are plain JSON (served by the API)
    for n in nodes:
        json.dumps(n.validator.reports)
        if n.hoster_duty is not None:
            json.dumps(n.hoster_duty.reports)
            assert n.hoster_duty.reports[first]["revealed_block"] is not None
