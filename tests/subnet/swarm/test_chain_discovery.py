"""Initial peers from the chain (subnet/swarm/discovery.py) on a real devnet chain process:
registered nodes' multiaddrs become dialable peers, bad entries are skipped with a log line,
and a DHT peer started from them alone joins the swarm. Hypertensor's binary form decodes too."""

from __future__ import annotations

import logging
import socket

import pytest

from chain.devnet import DevnetChain, dev_accounts
from chain.hypertensor import records
from chain.multiaddr_bin import encode_multiaddr
from chain.types import UNIT
from keys import AccountKey, NodeKey
from subnet.swarm.discovery import checked_peer, decode_chain_maddr, peers_from_chain


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    from chain.devnet.process import start_devnet_process

    d = tmp_path_factory.mktemp("discovery-chain")
    handle = start_devnet_process(d / "chain.db", block_time=0.1, epoch_length=10, log_path=d / "chain.log")
    yield handle
    handle.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _subnet(url: str, maddrs: list[tuple[NodeKey, str]], first_account: int) -> int:
    accounts = dev_accounts(first_account + len(maddrs) + 1)
    with DevnetChain(url, coldkey=accounts[first_account]) as owner:
        sid = owner.register_subnet(f"discovery-{first_account}", min_stake=100 * UNIT, max_stake=1000 * UNIT)
        for i, (key, maddr) in enumerate(maddrs):
            with DevnetChain(url, coldkey=accounts[first_account + 1 + i]) as cold:
                cold.register_subnet_node(sid, hotkey=AccountKey.generate().address, peer_id=key.peer_id,
                                          stake=100 * UNIT, multiaddr=maddr)
    return sid


def test_registered_multiaddrs_become_peers_and_bad_ones_are_logged(chain, caplog):
    good, bare, liar, junk, own = (NodeKey.generate() for _ in range(5))
    other = NodeKey.generate()
    entries = [
        (good, f"/ip4/10.1.0.2/tcp/31337/p2p/{good.peer_id}"),
        (bare, "/ip4/10.1.0.3/tcp/31337"),  # no /p2p/: the registered peer id is appended
        (liar, f"/ip4/10.1.0.4/tcp/31337/p2p/{other.peer_id}"),  # names someone else: dropped
        (junk, "/ip4/not-an-ip/tcp/1"),
        (own, f"/ip4/10.1.0.6/tcp/31337/p2p/{own.peer_id}"),  # ourselves: never our own initial peer
    ]
    sid = _subnet(chain.url, entries, first_account=1)
    with caplog.at_level(logging.WARNING, logger="subnet.swarm.discovery"), DevnetChain(chain.url) as reader:
        peers = peers_from_chain(reader, sid, exclude_peer_ids=[own.peer_id])
    assert peers == [f"/ip4/10.1.0.2/tcp/31337/p2p/{good.peer_id}", f"/ip4/10.1.0.3/tcp/31337/p2p/{bare.peer_id}"]
    skipped = [r.fields for r in caplog.records if r.getMessage() == "chain_maddr_skipped"]
    assert len(skipped) == 2 and all("\n" not in f["reason"] for f in skipped)
    assert any("not the registered" in f["reason"] for f in skipped)
    assert any("not-an-ip" in f["maddr"] for f in skipped)


def test_a_peer_joins_the_swarm_from_the_chain_alone(chain):
    from hivemind.utils import get_dht_time

    from subnet.swarm.dht import start_dht

    key, port = NodeKey.generate(), _free_port()
    maddr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{key.peer_id}"
    sid = _subnet(chain.url, [(key, maddr)], first_account=7)
    first = start_dht(key, host_maddrs=[f"/ip4/127.0.0.1/tcp/{port}"])
    joiner = None
    try:
        first.store("hello", "chain", expiration_time=get_dht_time() + 60)
        with DevnetChain(chain.url) as reader:
            peers = peers_from_chain(reader, sid)
        assert peers == [maddr]
        joiner = start_dht(None, peers, client_mode=True)
        assert joiner.get("hello", latest=True).value == "chain"
    finally:
        for d in (joiner, first):
            if d is not None:
                d.shutdown()


def test_hypertensor_binary_multiaddrs_and_bootnodes_decode():
    peer = NodeKey.generate().peer_id
    text = f"/ip4/203.0.113.7/tcp/31330/p2p/{peer}"
    raw = encode_multiaddr(text)
    assert decode_chain_maddr(raw) == text
    assert decode_chain_maddr("0x" + raw.hex()) == text
    assert decode_chain_maddr(list(raw)) == text
    assert checked_peer("0x" + raw.hex(), peer, "test") == text
    assert checked_peer("0xzz", peer, "test") is None and checked_peer(b"\xff\xff\xff", peer, "test") is None
    stored = {f"0x{peer.encode().hex()}": "0x" + raw.hex()}
    assert [decode_chain_maddr(m) for m in records.bootnodes(stored)] == [text]
    assert [decode_chain_maddr(m) for m in records.bootnodes([(peer.encode(), raw)])] == [text]
    assert records.bootnodes(None) == []
