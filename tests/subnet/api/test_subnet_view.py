"""`ChainSubnetView` over a real devnet chain process and real DHT announcements, and `/subnet/*`."""

from __future__ import annotations

import httpx
import pytest
from api_support import MODEL, Proposer

from chain.types import SCORE_SCALE, UNIT


@pytest.fixture(scope="module")
def view(live_subnet):
    proposer = Proposer(live_subnet)  # a live subnet: epochs accepted, nodes keep their reputation
    try:
        proposer.wait_accepted()
        yield live_subnet.view()
    finally:
        proposer.close()


def test_nodes_carry_chain_state_and_served_blocks(view, live_subnet):
    nodes = {n.node_id: n for n in view.nodes()}
    assert sorted(nodes) == live_subnet.node_ids
    for n in nodes.values():
        assert n.node_class == "validator" and n.reputation > 0 and n.stake >= 100 * UNIT
        assert n.last_score == pytest.approx(live_subnet.scores[n.node_id] / SCORE_SCALE)
    by_peer = {n.peer_id: n for n in nodes.values()}
    for key, (start, end) in zip(live_subnet.node_keys, live_subnet.spans, strict=False):
        n = by_peer[key.peer_id]
        assert [(b["model"], b["start"], b["end"]) for b in n.blocks] == [(MODEL, start, end)]
        assert n.blocks_served == end - start
    assert by_peer[live_subnet.node_keys[2].peer_id].blocks == []


def test_coverage_per_block(view, live_subnet):
    (cov,) = view.coverage()
    assert cov.model == MODEL and cov.num_blocks == 8 and cov.complete
    overlap = live_subnet.spans[1][0]
    assert len(cov.blocks[overlap]) == 2 and len(cov.blocks[0]) == 1
    assert cov.cache_tokens_total == 2 * 8192


def test_epochs_show_seed_proposal_attestations_outcome(view, live_subnet):
    from consensus.probe import probe_seed

    epochs = {e.epoch: e for e in view.epochs(limit=200)}
    e = epochs[live_subnet.settled_epoch]
    assert e.outcome == "accepted" and e.attestation_ratio == 1.0
    assert e.attestations == live_subnet.node_ids
    assert [p["node_id"] for p in e.proposal] == live_subnet.node_ids
    randomness = view.chain.get_epoch_randomness(live_subnet.subnet_id, e.epoch)
    assert e.probe_seed == probe_seed(randomness, live_subnet.subnet_id, e.epoch).hex()
    assert e.elected_validator in live_subnet.node_ids
    assert e.scores == {str(n): pytest.approx(s / SCORE_SCALE) for n, s in live_subnet.scores.items()}


def test_rewards_follow_scores(view, live_subnet):
    paid = [r for r in view.rewards(limit=200) if r.epoch == live_subnet.settled_epoch]
    emission = {r.node_id: r.amount for r in paid if r.kind == "emission"}
    assert sorted(emission) == live_subnet.node_ids
    low, mid, high = (emission[n] for n in live_subnet.node_ids)
    assert 0 < low < mid < high  # paid in proportion to the scores 0.4 / 0.6 / 0.8
    assert [r.kind for r in paid].count("validator") == 1


def test_reports_feed_commits_and_reveals(live_subnet):
    from subnet.api.subnet_view import ChainSubnetView

    peers = [k.peer_id for k in live_subnet.node_keys]
    reports = {live_subnet.settled_epoch: {"commits": {p: "c" for p in peers}, "reveals": peers[:2],
                                          "scores": {peers[0]: 0.9, peers[1]: 0.8}}}
    v = ChainSubnetView(live_subnet.view().chain, live_subnet.subnet_id, reports=lambda: reports)
    e = next(x for x in v.epochs(limit=200) if x.epoch == live_subnet.settled_epoch)
    assert e.commits == sorted(peers) and e.reveals == sorted(peers[:2])
    assert e.scores == {peers[0]: 0.9, peers[1]: 0.8}
    # the validator duty's report shape (validator.duty.ValidatorEpoch.report)
    duty_reports = {live_subnet.settled_epoch: {
        "hoster_commits": peers, "hoster_reveals": {peers[0]: "valid", peers[1]: "bad_reveal"},
        "hoster_scores": {peers[0]: 1.0, peers[1]: 0.0}, "validator_scores": {peers[2]: 0.5},
        "scores": [{"node_id": 1, "score": "1"}]}}
    v = ChainSubnetView(live_subnet.view().chain, live_subnet.subnet_id, reports=lambda: duty_reports)
    e = next(x for x in v.epochs(limit=200) if x.epoch == live_subnet.settled_epoch)
    assert e.commits == sorted(peers) and e.reveals == [peers[0]]
    assert e.reveal_status[peers[1]] == "bad_reveal"
    assert e.scores == {peers[0]: 1.0, peers[1]: 0.0} and e.validator_scores == {peers[2]: 0.5}


def test_subnet_routes_and_metrics(local_backend, view, serve, live_subnet):
    from subnet.api import create_app

    url = serve(create_app(local_backend, subnet_view=view))
    s = httpx.get(url + "/subnet/summary").json()
    assert s["subnet_id"] == live_subnet.subnet_id and s["state"] == "Active" and s["models"] == [MODEL]
    assert len(httpx.get(url + "/subnet/nodes").json()["data"]) == 3
    assert httpx.get(url + "/subnet/coverage").json()["data"][0]["complete"] is True
    epochs = httpx.get(url + "/subnet/epochs", params={"limit": 200}).json()["data"]
    assert any(e["outcome"] == "accepted" for e in epochs)
    assert httpx.get(url + "/subnet/rewards").json()["data"]
    assert httpx.get(url + "/subnet/epochs", params={"limit": 0}).status_code == 400
    metrics = httpx.get(url + "/metrics").text
    assert 'mesh_subnet_epoch_outcomes{outcome="accepted"}' in metrics
    assert f'mesh_subnet_model_servable{{model="{MODEL}"}} 1.0' in metrics
    assert 'mesh_subnet_nodes{node_class="validator"} 3.0' in metrics


def test_no_view_is_404(api_url):
    r = httpx.get(api_url + "/subnet/nodes")
    assert r.status_code == 404 and r.json()["error"]["code"] == "no_subnet_view"
