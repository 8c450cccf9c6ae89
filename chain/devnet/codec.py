"""JSON encoding of the chain's typed values, shared by the devnet server and client.

Amounts and scores exceed 2**53, so they travel as decimal strings; everything else is
plain JSON. Decoding validates types so a broken server cannot hand the node garbage.
"""

from __future__ import annotations

import json
from typing import Any

from chain.types import ConsensusSubmission, EpochInfo, NodeClass, ScoreEntry, SubnetInfo, SubnetNode, SubnetState


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, no whitespace, no NaN): what gets signed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def as_int(value: Any, name: str = "value") -> int:
    """Int from an int or a decimal string; rejects bools, floats and junk."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit() and len(value) <= 80:
        return int(value)
    raise ValueError(f"{name} must be an integer")


def epoch_info_to_json(e: EpochInfo) -> dict:
    return {
        "epoch": e.epoch,
        "block": e.block,
        "blocks_per_epoch": e.blocks_per_epoch,
        "progress": e.progress,
        "seconds_left": e.seconds_left,
        "block_time": e.block_time,
    }


def epoch_info_from_json(d: dict) -> EpochInfo:
    return EpochInfo(
        epoch=int(d["epoch"]),
        block=int(d["block"]),
        blocks_per_epoch=int(d["blocks_per_epoch"]),
        progress=float(d["progress"]),
        seconds_left=float(d["seconds_left"]),
        block_time=float(d["block_time"]),
    )


def subnet_to_json(s: SubnetInfo) -> dict:
    return {
        "subnet_id": s.subnet_id,
        "name": s.name,
        "owner": s.owner,
        "state": s.state.value,
        "min_stake": str(s.min_stake),
        "max_stake": str(s.max_stake),
        "registered_block": s.registered_block,
        "activated_block": s.activated_block,
        "repo": s.repo,
        "description": s.description,
    }


def subnet_from_json(d: dict) -> SubnetInfo:
    return SubnetInfo(
        subnet_id=int(d["subnet_id"]),
        name=str(d["name"]),
        owner=str(d["owner"]),
        state=SubnetState(d["state"]),
        min_stake=as_int(d["min_stake"]),
        max_stake=as_int(d["max_stake"]),
        registered_block=int(d["registered_block"]),
        activated_block=None if d.get("activated_block") is None else int(d["activated_block"]),
        repo=str(d.get("repo", "")),
        description=str(d.get("description", "")),
    )


def node_to_json(n: SubnetNode) -> dict:
    return {
        "subnet_id": n.subnet_id,
        "node_id": n.node_id,
        "coldkey": n.coldkey,
        "hotkey": n.hotkey,
        "peer_id": n.peer_id,
        "node_class": n.node_class.name,
        "stake": str(n.stake),
        "reputation": n.reputation,
        "registered_epoch": n.registered_epoch,
        "classified_epoch": n.classified_epoch,
        "multiaddr": n.multiaddr,
    }


def node_from_json(d: dict) -> SubnetNode:
    return SubnetNode(
        subnet_id=int(d["subnet_id"]),
        node_id=int(d["node_id"]),
        coldkey=str(d["coldkey"]),
        hotkey=str(d["hotkey"]),
        peer_id=str(d["peer_id"]),
        node_class=NodeClass[d["node_class"]],
        stake=as_int(d["stake"]),
        reputation=float(d["reputation"]),
        registered_epoch=int(d.get("registered_epoch", 0)),
        classified_epoch=int(d.get("classified_epoch", 0)),
        multiaddr=str(d.get("multiaddr", "")),
    )


def submission_to_json(s: ConsensusSubmission) -> dict:
    return {
        "subnet_id": s.subnet_id,
        "epoch": s.epoch,
        "validator_node_id": s.validator_node_id,
        "data": [{"node_id": e.node_id, "score": str(e.score)} for e in s.data],
        "attestations": {str(k): v for k, v in s.attestations.items()},
        "block": s.block,
    }


def submission_from_json(d: dict) -> ConsensusSubmission:
    return ConsensusSubmission(
        subnet_id=int(d["subnet_id"]),
        epoch=int(d["epoch"]),
        validator_node_id=int(d["validator_node_id"]),
        data=tuple(ScoreEntry(int(e["node_id"]), as_int(e["score"])) for e in d["data"]),
        attestations={int(k): int(v) for k, v in d.get("attestations", {}).items()},
        block=int(d.get("block", 0)),
    )
