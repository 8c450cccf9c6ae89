"""Hypertensor backend pieces that need no node: metadata-driven argument filling, multiaddrs, retries."""

from __future__ import annotations

import time

import pytest

from chain import connect
from chain.hypertensor.client import HypertensorChain
from chain.hypertensor.extrinsics import btree, compose_args
from chain.multiaddr_bin import encode_multiaddr
from chain.types import ChainError, ChainUnavailableError
from keys import NodeKey

# Shape of substrate-interface's param info for two calls of the public testnet runtime.
REGISTER_NODE = {
    "subnet_id": "u32",
    "hotkey": "[u8; 20]",
    "peer_info": {"peer_id": "Bytes", "multiaddr": (None, "Bytes")},
    "bootnode_peer_info": (None, {"peer_id": "Bytes", "multiaddr": (None, "Bytes")}),
    "delegate_reward_rate": "u128",
    "stake_to_be_added": "u128",
    "unique": (None, "Bytes"),
    "max_burn_amount": "u128",
}
REGISTER_SUBNET = {
    "max_cost": "u128",
    "subnet_data": {"name": "Bytes", "min_stake": "u128", "initial_coldkeys": "scale_info::105", "misc": "Bytes"},
}


def test_compose_fills_by_name_and_optionals_with_none():
    values = {"subnet_id": 7, "hotkey": "0xab", "peer_info": {"peer_id": b"p"}, "delegate_reward_rate": 0,
              "stake_to_be_added": 5, "max_burn_amount": 9, "not_in_this_runtime": 1}  # fmt: skip
    out = compose_args("register_subnet_node", REGISTER_NODE, values)
    assert out["subnet_id"] == 7 and out["bootnode_peer_info"] is None and out["unique"] is None
    assert "not_in_this_runtime" not in out and list(out) == list(REGISTER_NODE)


def test_compose_builds_struct_arguments_from_field_names():
    out = compose_args("register_subnet", REGISTER_SUBNET,
                       {"max_cost": 1, "name": b"n", "min_stake": 2, "initial_coldkeys": [], "misc": b""})  # fmt: skip
    assert out == {"max_cost": 1, "subnet_data": {"name": b"n", "min_stake": 2, "initial_coldkeys": [], "misc": b""}}


def test_compose_fails_loudly_naming_call_and_argument():
    with pytest.raises(ChainError, match=r"Network\.propose_attestation.*'subnet_node_id'"):
        compose_args("propose_attestation", {"subnet_id": "u32", "subnet_node_id": "u32"}, {"subnet_id": 1})
    with pytest.raises(ChainError, match=r"'subnet_data\.min_stake'"):
        values = {"max_cost": 1, "name": b"n", "initial_coldkeys": [], "misc": b""}
        compose_args("register_subnet", REGISTER_SUBNET, values)


def test_btree_args_sorted_and_unique():
    assert btree([(b"\x02", "b", 1), (b"\x01", "a", 2), (b"\x02", "b2", 3)]) == [("a", 2), ("b", 1)]


def test_binary_multiaddr():
    pid = NodeKey.from_seed(b"\x01" * 32).peer_id
    raw = encode_multiaddr(f"/ip4/127.0.0.1/tcp/31330/p2p/{pid}")
    assert raw[:7] == bytes([0x04, 127, 0, 0, 1, 0x06]) + (31330).to_bytes(2, "big")[:1]
    assert raw.endswith(__import__("base58").b58decode(pid))
    with pytest.raises(ValueError):
        encode_multiaddr("/bogus/1")


def test_transient_errors_retried_then_typed():
    chain = HypertensorChain("ws://127.0.0.1:9", retries=2)
    t = time.monotonic()
    with pytest.raises(ChainUnavailableError):
        chain.get_block()
    assert time.monotonic() - t >= 0.2 + 0.4  # two backoffs: it did retry


def test_connect_picks_backend_by_scheme():
    from chain.devnet import DevnetChain

    assert isinstance(connect("http://127.0.0.1:1"), DevnetChain)
    assert isinstance(connect("ws://127.0.0.1:1"), HypertensorChain)
    with pytest.raises(ChainError):
        connect("ftp://x")


def test_binary_multiaddr_round_trip_and_bounds():
    from chain.multiaddr_bin import check_node_multiaddr, decode_multiaddr

    pid = NodeKey.from_seed(b"\x02" * 32).peer_id
    texts = (f"/ip4/10.1.2.3/tcp/31330/p2p/{pid}", f"/ip6/::1/udp/9/quic-v1/p2p/{pid}",
             f"/dns4/a.example/tcp/1/p2p/{pid}")
    for text in texts:
        assert decode_multiaddr(encode_multiaddr(text)) == text
    assert check_node_multiaddr(f"/ip4/1.2.3.4/tcp/5/p2p/{pid}") == pid
    for bad in ("/ip4/1.2.3.4/tcp/5", f"/ip4/1.2.3.4/p2p/{pid}/tcp/5", "/ip4/999.1.1.1/tcp/1/p2p/" + pid, "1.2.3.4"):
        with pytest.raises(ValueError):
            check_node_multiaddr(bad)
    for junk in (b"\x04\x01", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\x7f", bytes(2000)):
        with pytest.raises(ValueError):
            decode_multiaddr(junk)


# What substrate-interface returns for `SubnetNodesData` of a key that is not there: the type's default.
DEFAULT_NODE = {"id": 0, "hotkey": "0x" + "00" * 20, "peer_info": {"peer_id": "0x", "multiaddr": None},
                "classification": {"node_class": "Registered", "start_epoch": 0}}  # fmt: skip


class FakeStorage:
    """Storage reads of a node with a queued registration (id 7) and an active one (id 3): defaults for the rest."""

    def __init__(self, pid: str, maddr: bytes):
        hot = "0x" + "ab" * 20
        self.maps = {
            ("SubnetNodesData", (1, 3)): {"id": 3, "hotkey": hot, "peer_info": {"peer_id": "0x" + pid.encode().hex(),
                                          "multiaddr": "0x" + maddr.hex()},
                                          "classification": {"node_class": "Validator", "start_epoch": 4}},
            ("RegisteredSubnetNodesData", (1, 7)): {"id": 7, "hotkey": "0x" + "cd" * 20,
                                                    "peer_info": {"peer_id": b"queued", "multiaddr": None},
                                                    "classification": {"node_class": "Registered", "start_epoch": 9}},
            ("HotkeySubnetNodeId", (1, "0x" + "cd" * 20)): 7,
            ("HotkeySubnetNodeId", (1, hot)): 3,
        }

    def query(self, storage, params=None, module="Network"):
        key = (storage, tuple(params or ()))
        if key in self.maps:
            return self.maps[key]
        if storage in ("SubnetNodesData", "RegisteredSubnetNodesData"):
            return dict(DEFAULT_NODE)  # ValueQuery default, not None
        return None


def test_missing_node_record_is_absent_not_node_zero():
    """A queued node is read from the queue (class Registered, its own id), never as the default record (id 0)."""
    pid = NodeKey.from_seed(b"\x03" * 32).peer_id
    maddr = f"/ip4/203.0.113.5/tcp/31330/p2p/{pid}"
    chain = HypertensorChain("ws://127.0.0.1:9")
    chain.connection = FakeStorage(pid, encode_multiaddr(maddr))
    queued = chain.get_node_by_hotkey(1, "0x" + "cd" * 20)
    assert queued is not None and queued.node_id == 7 and queued.node_class.name == "REGISTERED"
    active = chain.get_node_by_hotkey(1, "0x" + "ab" * 20)
    assert active.node_id == 3 and active.node_class.name == "VALIDATOR" and active.peer_id == pid
    assert active.multiaddr == maddr  # text form, decoded from the stored binary form
    assert chain.get_node(1, 5) is None and chain.get_node_by_hotkey(1, "0x" + "ef" * 20) is None


def test_record_presence_and_multiaddr_text():
    from chain.hypertensor import records

    assert not records.is_record_of(DEFAULT_NODE, 5) and records.is_record_of({"id": 5}, 5)
    assert not records.is_record_of(None, 0) and not records.is_record_of({"id": "x"}, 1)
    pid = NodeKey.from_seed(b"\x04" * 32).peer_id
    raw = encode_multiaddr(f"/ip4/1.2.3.4/tcp/5/p2p/{pid}")
    for form in ("0x" + raw.hex(), raw, list(raw), {"Some": "0x" + raw.hex()}):
        assert records.multiaddr_text(form) == f"/ip4/1.2.3.4/tcp/5/p2p/{pid}"
    assert records.multiaddr_text(None) == "" and records.multiaddr_text("0xffff") == ""
    # the Hoskinson testnet runtime keeps peer_id at the top level of the record
    flat = {"id": 2, "hotkey": "0x" + "ab" * 20, "peer_id": "0x" + pid.encode().hex(), "bootnode": None,
            "classification": {"node_class": "Idle", "start_epoch": 3}}
    node = records.subnet_node(1, flat, queued=False, coldkey=None, reputation=0, stake=5)
    assert node.peer_id == pid and node.node_class.name == "IDLE" and node.multiaddr == ""
