"""The devnet's signed calls: `(state, db, signer, args) -> JSON result`.

Each runs inside the transaction `ChainState.submit` opened (after the signature and
nonce checks), so a raised chain error rolls back the call's effects only.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING

from chain.devnet.checks import (
    U128_MAX,
    address as _address,
    fail as _fail,
    peer_id as _peer_id,
    text as _text,
    u32 as _u32,
    u128 as _u128,
)
from chain.devnet.delegate import add_to_delegate_stake, remove_delegate_stake
from chain.types import NodeClass, SubnetState

if TYPE_CHECKING:
    from chain.devnet.state import ChainState

MAX_SCORE = U128_MAX  # u128 like the pallet


def _transfer(st: ChainState, db, signer: str, a: dict) -> dict:
    to = _address(a.get("to"), "to")
    amount = _u128(a.get("amount"), "amount", 1)
    st.debit(db, signer, amount)
    st.credit(db, to, amount)
    return {}


def _register_subnet(st: ChainState, db, signer: str, a: dict) -> dict:
    cfg = st.config
    name = _text(a.get("name"), "name", 64, required=True)
    min_stake = _u128(a.get("min_stake"), "min_stake")
    max_stake = _u128(a.get("max_stake"), "max_stake")
    max_cost = _u128(a["max_cost"], "max_cost") if "max_cost" in a else None  # absent: no cap
    if min_stake < cfg.min_stake_floor or max_stake < min_stake:
        raise _fail("StakeOutOfRange", f"need {cfg.min_stake_floor} <= min_stake <= max_stake")
    initial = a.get("initial_coldkeys") or []
    if not isinstance(initial, list) or len(initial) > 256:
        raise _fail("InvalidRequest", "initial_coldkeys must be a list")
    initial = sorted({_address(c, "initial_coldkeys") for c in initial})
    if db.execute("SELECT 1 FROM subnets WHERE name=?", (name,)).fetchone():
        raise _fail("SubnetNameTaken", f"a subnet named {name!r} exists")
    if max_cost is not None and cfg.subnet_registration_cost > max_cost:
        raise _fail("CostExceedsMax", f"registration cost {cfg.subnet_registration_cost} > max_cost {max_cost}")
    st.debit(db, signer, cfg.subnet_registration_cost)
    sid = st.allocate_subnet_id()
    db.execute(
        "INSERT INTO subnets VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, 1)",
        (
            sid, name, signer, SubnetState.REGISTERED.value, str(min_stake), str(max_stake), st.block(),
            _text(a.get("repo"), "repo", 512), _text(a.get("description"), "description", 2048), json.dumps(initial),
        ),
    )  # fmt: skip
    return {"subnet_id": sid}


def _activate_subnet(st: ChainState, db, signer: str, a: dict) -> dict:
    sid = _u32(a.get("subnet_id"), "subnet_id")
    sub = st.subnet(sid)
    if sub.owner != signer:
        raise _fail("WrongSigner", f"only the owner {sub.owner} can activate subnet {sid}")
    if sub.state != SubnetState.REGISTERED:
        raise _fail("SubnetAlreadyActive", f"subnet {sid} is {sub.state.value}")
    count = db.execute("SELECT COUNT(*) FROM nodes WHERE subnet_id=?", (sid,)).fetchone()[0]
    if count < st.config.min_subnet_nodes:
        raise _fail("NotEnoughNodes", f"{count} nodes < {st.config.min_subnet_nodes} required")
    db.execute(
        "UPDATE subnets SET state=?, activated_block=? WHERE subnet_id=?",
        (SubnetState.ACTIVE.value, st.block(), sid),
    )
    return {}


def _register_subnet_node(st: ChainState, db, signer: str, a: dict) -> dict:
    sid = _u32(a.get("subnet_id"), "subnet_id")
    hotkey = _address(a.get("hotkey"), "hotkey")
    peer_id = _peer_id(a.get("peer_id"))
    multiaddr = _text(a.get("multiaddr"), "multiaddr", 512)
    stake = _u128(a.get("stake"), "stake")
    max_burn = _u128(a["max_burn"], "max_burn") if "max_burn" in a else None  # absent: no cap
    sub = st.subnet(sid)
    if sub.state == SubnetState.PAUSED:
        raise _fail("SubnetPaused", f"subnet {sid} is paused")
    initial = json.loads(db.execute("SELECT initial_coldkeys FROM subnets WHERE subnet_id=?", (sid,)).fetchone()[0])
    if sub.state == SubnetState.REGISTERED and initial and signer not in initial:
        raise _fail("NotInitialColdkey", f"{signer} is not an initial coldkey of subnet {sid}")
    if hotkey == signer:
        raise _fail("HotkeyIsColdkey", "the hotkey must differ from the coldkey")
    if st.node_by_hotkey(sid, hotkey) is not None:
        raise _fail("HotkeyTaken", f"hotkey {hotkey} is already registered in subnet {sid}")
    if st.node_by_peer_id(sid, peer_id) is not None:
        raise _fail("PeerIdTaken", f"peer id {peer_id} is already registered in subnet {sid}")
    if not sub.min_stake <= stake <= sub.max_stake:
        raise _fail("StakeOutOfRange", f"stake must be in [{sub.min_stake}, {sub.max_stake}]")
    burn = st.config.node_registration_burn
    if max_burn is not None and burn > max_burn:
        raise _fail("BurnExceedsMax", f"registration burn {burn} > max_burn {max_burn}")
    st.debit(db, signer, stake + burn)
    nid = db.execute("SELECT next_node_id FROM subnets WHERE subnet_id=?", (sid,)).fetchone()[0]
    db.execute("UPDATE subnets SET next_node_id=? WHERE subnet_id=?", (nid + 1, sid))
    epoch = st.current_epoch()
    # Initial nodes (before activation) are validators at once; later ones queue.
    cls = NodeClass.VALIDATOR if sub.state == SubnetState.REGISTERED else NodeClass.REGISTERED
    db.execute(
        "INSERT INTO nodes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
        (
            sid, nid, signer, hotkey, peer_id, multiaddr, int(cls), str(stake), st.config.reputation_start,
            epoch, epoch, epoch + st.config.queue_epochs,
        ),
    )  # fmt: skip
    return {"node_id": nid}


def _remove_subnet_node(st: ChainState, db, signer: str, a: dict) -> dict:
    sid, nid = _u32(a.get("subnet_id"), "subnet_id"), _u32(a.get("node_id"), "node_id")
    st.owned_node(signer, sid, nid)
    st.remove_node(db, sid, nid)
    return {}


def _update_peer_info(st: ChainState, db, signer: str, a: dict) -> dict:
    sid, nid = _u32(a.get("subnet_id"), "subnet_id"), _u32(a.get("node_id"), "node_id")
    peer_id = _peer_id(a.get("peer_id"))
    multiaddr = _text(a.get("multiaddr"), "multiaddr", 512)
    st.owned_node(signer, sid, nid)
    other = st.node_by_peer_id(sid, peer_id)
    if other is not None and other.node_id != nid:
        raise _fail("PeerIdTaken", f"peer id {peer_id} is already registered in subnet {sid}")
    db.execute(
        "UPDATE nodes SET peer_id=?, multiaddr=? WHERE subnet_id=? AND node_id=?",
        (peer_id, multiaddr, sid, nid),
    )
    return {}


def _add_stake(st: ChainState, db, signer: str, a: dict) -> dict:
    sid, nid = _u32(a.get("subnet_id"), "subnet_id"), _u32(a.get("node_id"), "node_id")
    hotkey = _address(a.get("hotkey"), "hotkey")
    amount = _u128(a.get("amount"), "amount", 1)
    node = st.owned_node(signer, sid, nid)
    if hotkey != node.hotkey:
        raise _fail("WrongHotkey", f"node {nid} has hotkey {node.hotkey}")
    max_stake = st.subnet(sid).max_stake
    if node.stake + amount > max_stake:
        raise _fail("StakeOutOfRange", f"stake would exceed the subnet maximum {max_stake}")
    st.debit(db, signer, amount)
    db.execute("UPDATE nodes SET stake=? WHERE subnet_id=? AND node_id=?", (str(node.stake + amount), sid, nid))
    return {"stake": str(node.stake + amount)}


def _remove_stake(st: ChainState, db, signer: str, a: dict) -> dict:
    sid = _u32(a.get("subnet_id"), "subnet_id")
    hotkey = _address(a.get("hotkey"), "hotkey")
    amount = _u128(a.get("amount"), "amount", 1)
    st.subnet(sid)
    node = st.node_by_hotkey(sid, hotkey)
    if node is None:
        raise _fail("UnknownNode", f"no node with hotkey {hotkey} in subnet {sid}")
    node = st.owned_node(signer, sid, node.node_id)
    if amount > node.stake:
        raise _fail("InsufficientStake", f"stake {node.stake} < {amount}")
    min_stake = st.subnet(sid).min_stake
    if node.stake - amount < min_stake:
        raise _fail("InsufficientStake", f"remaining stake would fall below the minimum {min_stake}; remove the node")
    unlock = st.current_epoch() + st.config.unbonding_epochs
    db.execute(
        "UPDATE nodes SET stake=? WHERE subnet_id=? AND node_id=?", (str(node.stake - amount), sid, node.node_id)
    )
    db.execute("INSERT INTO unbondings (account, amount, unlock_epoch) VALUES (?, ?, ?)", (signer, str(amount), unlock))
    return {"unlock_epoch": unlock}


def _claim_unbondings(st: ChainState, db, signer: str, a: dict) -> dict:
    epoch = st.current_epoch()
    rows = db.execute(
        "SELECT id, amount FROM unbondings WHERE account=? AND unlock_epoch<=?", (signer, epoch)
    ).fetchall()
    total = sum(int(r[1]) for r in rows)
    db.executemany("DELETE FROM unbondings WHERE id=?", [(r[0],) for r in rows])
    if total:
        st.credit(db, signer, total)
    return {"claimed": str(total)}


def _propose_attestation(st: ChainState, db, signer: str, a: dict) -> dict:
    sid = _u32(a.get("subnet_id"), "subnet_id")
    raw = a.get("data")
    if not isinstance(raw, list) or len(raw) > st.config.max_data_entries:
        raise _fail("InvalidRequest", f"data must be a list of at most {st.config.max_data_entries} entries")
    if not all(isinstance(entry, dict) for entry in raw):
        raise _fail("InvalidRequest", "data entries are {node_id, score}")
    entries = [(_u32(e.get("node_id"), "node_id"), _u128(e.get("score"), "score")) for e in raw]
    if st.subnet(sid).state != SubnetState.ACTIVE:
        raise _fail("SubnetNotActive", f"subnet {sid} is not active")
    epoch = st.current_epoch()
    elected = st.elected(sid, epoch)
    node = st.node_by_hotkey(sid, signer)
    if node is None:
        raise _fail("UnknownNode", f"{signer} is not the hotkey of a node in subnet {sid}")
    if elected != node.node_id:
        raise _fail("NotElected", f"node {node.node_id} is not the elected validator of epoch {epoch}")
    if st.submission(sid, epoch) is not None:
        raise _fail("AlreadyProposed", f"epoch {epoch} already has a proposal")
    # Canonicalise: drop nodes below Included, keep the lowest score per node, sort by id.
    classes = {
        r[0]: r[1] for r in db.execute("SELECT node_id, class FROM nodes WHERE subnet_id=?", (sid,)).fetchall()
    }
    best: dict[int, int] = {}
    for nid, score in entries:
        if classes.get(nid, 0) < NodeClass.INCLUDED:
            continue
        best[nid] = min(score, best.get(nid, score))
    data = [[nid, str(best[nid])] for nid in sorted(best)]
    block = st.block()
    db.execute("INSERT INTO submissions VALUES (?, ?, ?, ?, ?)", (sid, epoch, node.node_id, json.dumps(data), block))
    db.execute("INSERT INTO attestations VALUES (?, ?, ?, ?)", (sid, epoch, node.node_id, block))
    return {"epoch": epoch, "entries": len(data)}


def _attest(st: ChainState, db, signer: str, a: dict) -> dict:
    sid = _u32(a.get("subnet_id"), "subnet_id")
    st.subnet(sid)
    epoch = st.current_epoch()
    node = st.node_by_hotkey(sid, signer)
    if node is None:
        raise _fail("UnknownNode", f"{signer} is not the hotkey of a node in subnet {sid}")
    if st.submission(sid, epoch) is None:
        raise _fail("NoSubmission", f"no proposal for epoch {epoch} yet")
    if node.node_id not in st.snapshot(sid, epoch):
        raise _fail("NotValidator", f"node {node.node_id} is not in the validator snapshot of epoch {epoch}")
    if db.execute(
        "SELECT 1 FROM attestations WHERE subnet_id=? AND epoch=? AND node_id=?", (sid, epoch, node.node_id)
    ).fetchone():
        raise _fail("AlreadyAttested", f"node {node.node_id} already attested epoch {epoch}")
    db.execute("INSERT INTO attestations VALUES (?, ?, ?, ?)", (sid, epoch, node.node_id, st.block()))
    return {"epoch": epoch}


CALL_HANDLERS: dict[str, Callable[[ChainState, sqlite3.Connection, str, dict], dict]] = {
    "transfer": _transfer,
    "register_subnet": _register_subnet,
    "activate_subnet": _activate_subnet,
    "register_subnet_node": _register_subnet_node,
    "remove_subnet_node": _remove_subnet_node,
    "update_peer_info": _update_peer_info,
    "add_stake": _add_stake,
    "remove_stake": _remove_stake,
    "claim_unbondings": _claim_unbondings,
    "add_to_delegate_stake": add_to_delegate_stake,
    "remove_delegate_stake": remove_delegate_stake,
    "propose_attestation": _propose_attestation,
    "attest": _attest,
}

CALLS = tuple(CALL_HANDLERS)
