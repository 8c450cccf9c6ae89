"""A node whose peers come only from the chain retries the DHT start before starting alone: a
peer that is up can miss one dial on a loaded machine, and a node that starts alone stays on a DHT
island of its own (a NAT'd hoster once announced to nobody)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from subnet.node import assembly

PEERS = ["/ip4/10.0.0.1/tcp/31337/p2p/12D3KooWGvGvpbcJWFj1Kyznrbm3gDK8C6G3U6mScPwFpYrjSbJ9"]


def bare_node(monkeypatch, failures: int) -> tuple[assembly.Node, list]:
    calls: list = []

    def fake_start_dht(key, peers, **kwargs):
        calls.append(list(peers))
        if peers and len(calls) <= failures:
            raise RuntimeError("p2pd: failed to connect to bootstrap peers")
        return SimpleNamespace(peers=list(peers))

    monkeypatch.setattr(assembly, "start_dht", fake_start_dht)
    monkeypatch.setattr(assembly.time, "sleep", lambda s: None)
    node = assembly.Node.__new__(assembly.Node)
    node.opts = SimpleNamespace(model=None, model_name=None, chain=None, initial_peers=[])
    node.chain = None
    node.node_key = None
    node.network = SimpleNamespace(use_auto_relay=False, relay_peers=[], dht_kwargs=lambda: {})
    monkeypatch.setattr(node, "_initial_peers", lambda: list(PEERS))
    return node, calls


def test_one_missed_dial_is_retried_with_the_chain_peers(monkeypatch):
    node, calls = bare_node(monkeypatch, failures=1)
    node._start_dht()
    assert calls == [PEERS, PEERS] and node.dht.peers == PEERS


@pytest.mark.parametrize("failures", [assembly.JOIN_ATTEMPTS, 99])
def test_after_every_attempt_fails_the_node_starts_as_the_first_peer(monkeypatch, failures):
    node, calls = bare_node(monkeypatch, failures=failures)
    node._start_dht()
    assert calls == [PEERS] * assembly.JOIN_ATTEMPTS + [[]] and node.dht.peers == []


def test_a_node_behind_nat_never_starts_alone(monkeypatch):
    """Nobody can dial a NAT'd node: as the first peer it would announce to no one, so it stops with
    one line (the CLI's UserError) instead, for its supervisor to start it again later."""
    from subnet.node.errors import UserError

    node, calls = bare_node(monkeypatch, failures=99)
    node.network.use_auto_relay = True
    with pytest.raises(UserError, match="behind NAT .* none of the 1 peers the chain lists answered in 3 attempts"):
        node._start_dht()
    assert calls == [PEERS] * assembly.JOIN_ATTEMPTS and not hasattr(node, "dht")
