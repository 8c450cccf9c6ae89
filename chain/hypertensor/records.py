"""Decode the `Network` pallet's storage values into the chain types.

Accounts are Ethereum-style (AccountId20), peer ids are the ASCII bytes of the base58
text, and percentages are fixed-point with PERCENT as 1.0.
"""

from __future__ import annotations

from typing import Any

from chain.multiaddr_bin import decode_multiaddr
from chain.types import ConsensusSubmission, NodeClass, ScoreEntry, SubnetInfo, SubnetNode, SubnetState

PERCENT = 10**18  # the pallet's percentage factor (1.0)
NO_EPOCH = 2**32 - 1  # start_epoch of a subnet that has not been activated

NODE_CLASSES = {
    "Registered": NodeClass.REGISTERED,
    "Idle": NodeClass.IDLE,
    "Included": NodeClass.INCLUDED,
    "Validator": NodeClass.VALIDATOR,
    "Deactivated": NodeClass.DEACTIVATED,
}


def text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode(errors="replace")
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return bytes.fromhex(value[2:]).decode()
        except (ValueError, UnicodeDecodeError):
            return value
    return str(value)


def address(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    return str(value)


def enum_name(value: Any) -> str:
    if isinstance(value, dict):
        return next(iter(value))
    return str(value)


def subnet_info(
    data: dict, owner: Any, *, min_stake: Any, max_stake: Any, epoch_length: int
) -> SubnetInfo:
    """A `SubnetsData` value plus the subnet's owner and stake bounds."""
    start_epoch = int(data.get("start_epoch") or 0)
    return SubnetInfo(
        subnet_id=int(data["id"]),
        name=text(data.get("name")),
        owner=address(owner) if owner else "",
        state=SubnetState(enum_name(data.get("state"))),
        min_stake=int(min_stake or 0),
        max_stake=int(max_stake or 0),
        registered_block=0,
        activated_block=None if start_epoch >= NO_EPOCH else start_epoch * epoch_length,
        repo=text(data.get("repo")),
        description=text(data.get("description")),
    )


def node_class(d: dict, queued: bool) -> NodeClass:
    """Queued nodes (`RegisteredSubnetNodesData`) are Registered whatever they claim."""
    if queued:
        return NodeClass.REGISTERED
    cls_info = d.get("classification") or {}
    return NODE_CLASSES.get(enum_name(cls_info.get("node_class")), NodeClass.IDLE)


def raw_bytes(value: Any) -> bytes:
    """A `Vec<u8>` as substrate-interface decodes it (0x-hex text, bytes or a list of ints)."""
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        try:
            return bytes.fromhex(value.removeprefix("0x"))
        except ValueError:
            return value.encode()
    if isinstance(value, (list, tuple)):
        return bytes(int(b) & 0xFF for b in value)
    return b""


def multiaddr_text(value: Any) -> str:
    """The stored binary multiaddr as text ('' when absent or not a multiaddr we can read)."""
    if isinstance(value, dict):  # Option<..> decoded as {"Some": ...} by some scalecodec versions
        value = value.get("Some")
    raw = raw_bytes(value)
    if not raw:
        return ""
    if raw.startswith(b"/"):  # a runtime that stored the text form
        return raw.decode(errors="replace")
    try:
        return decode_multiaddr(raw)
    except ValueError:
        return ""


def is_record_of(d: Any, node_id: int) -> bool:
    """A `SubnetNodesData` value for a missing key is the type's default (id 0): present only if ids match."""
    if not isinstance(d, dict):
        return False
    try:
        return int(d.get("id") or 0) == int(node_id)
    except (TypeError, ValueError):
        return False


def subnet_node(subnet_id: int, d: dict, *, queued: bool, coldkey: Any, reputation: Any, stake: int) -> SubnetNode:
    """A `SubnetNodesData` value plus the facts stored elsewhere (owner, reputation, stake)."""
    # Runtimes differ: a `peer_info` struct, or (older testnet runtimes) a top-level `peer_id`.
    peer_info = d.get("peer_info") or {"peer_id": d.get("peer_id")}
    maddr = peer_info.get("multiaddr")
    return SubnetNode(
        subnet_id=subnet_id,
        node_id=int(d["id"]),
        coldkey=address(coldkey) if coldkey else "",
        hotkey=address(d["hotkey"]),
        peer_id=text(peer_info.get("peer_id")),
        node_class=node_class(d, queued),
        stake=stake,
        reputation=min(1.0, int(reputation or 0) / PERCENT),
        registered_epoch=0,
        classified_epoch=int((d.get("classification") or {}).get("start_epoch") or 0),
        multiaddr=multiaddr_text(maddr),
    )


def consensus_submission(subnet_id: int, epoch: int, d: dict) -> ConsensusSubmission:
    """A `SubnetConsensusSubmission` value; its attests map may decode as pairs."""
    attests = d.get("attests") or {}
    if isinstance(attests, list):  # BTreeMap decoded as [(k, v), ...]
        attests = dict(attests)
    att: dict[int, int] = {}
    for k, v in attests.items():
        att[int(k)] = int(v.get("block", 0)) if isinstance(v, dict) else int(v or 0)
    data = tuple(ScoreEntry(int(e["subnet_node_id"]), int(e["score"])) for e in d.get("data") or [])
    return ConsensusSubmission(subnet_id, epoch, int(d["validator_id"]), data, att, int(d.get("block") or 0))


def bootnodes(value: Any) -> list[str]:
    """A decoded `SubnetBootnodes` value (a map or a list of pairs / entries) -> multiaddr strings
    (text as stored, or `0x` hex of a binary multiaddr); the caller parses and skips bad ones."""
    if not value:
        return []
    items = value.items() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else []
    out = []
    for item in items:
        maddr = item[-1] if isinstance(item, (list, tuple)) and item else item
        if isinstance(maddr, dict):
            maddr = maddr.get("multiaddr")
        if isinstance(maddr, (bytes, bytearray)):
            maddr = "0x" + bytes(maddr).hex()
        if isinstance(maddr, str) and maddr:
            out.append(maddr)
    return out
