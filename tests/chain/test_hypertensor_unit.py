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
