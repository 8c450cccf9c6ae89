"""The devnet's epoch-boundary rules: settle the last epoch, move the queue, prune, elect.

Run by `ChainState.produce_block` at the first block of each epoch, inside its open
transaction (`db`); reads through `state` see that transaction's writes.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from chain.devnet.delegate import earns_node_emissions
from chain.types import ConsensusSubmission, NodeClass, SubnetState

if TYPE_CHECKING:
    from chain.devnet.state import ChainState

# Every reputation change is recorded with the rule that made it, so an operator can see why.
REPUTATION_SCHEMA = """
CREATE TABLE IF NOT EXISTS reputation_changes (subnet_id INTEGER, epoch INTEGER, node_id INTEGER,
  before REAL NOT NULL, after REAL NOT NULL, reason TEXT NOT NULL, PRIMARY KEY (subnet_id, epoch, node_id));
"""
REPUTATION_REASONS = {
    "scored": "in the accepted epoch's scores",
    "missing_from_scores": "left out of the accepted epoch's scores",
    "no_proposal": "elected validator, proposed nothing",
    "proposal_rejected": "its proposal was rejected (too few attestations)",
    "attested_rejected": "attested a proposal that was rejected",
}


def start_epoch(state: ChainState, db: sqlite3.Connection, epoch: int, block: int) -> None:
    for (sid,) in db.execute("SELECT subnet_id FROM subnets WHERE state=?", (SubnetState.ACTIVE.value,)).fetchall():
        _finalise(state, db, sid, epoch - 1, epoch, block)
        _activate_queue(state, db, sid, epoch)
        _remove_low_reputation(state, db, sid, epoch)
        _elect(state, db, sid, epoch)


def _elect(state: ChainState, db: sqlite3.Connection, sid: int, epoch: int) -> None:
    ids = [
        r[0]
        for r in db.execute(
            "SELECT node_id FROM nodes WHERE subnet_id=? AND class=? ORDER BY node_id",
            (sid, int(NodeClass.VALIDATOR)),
        )
    ]
    db.executemany("INSERT OR IGNORE INTO snapshots VALUES (?, ?, ?)", [(sid, epoch, i) for i in ids])
    if ids:
        r = state.epoch_randomness(sid, epoch)
        chosen = ids[int.from_bytes(r, "big") % len(ids)]
        db.execute("INSERT OR REPLACE INTO elected VALUES (?, ?, ?)", (sid, epoch, chosen))


def _get_node_row(db: sqlite3.Connection, sid: int, nid: int) -> dict | None:
    row = db.execute(
        "SELECT class, stake, reputation, streak, coldkey FROM nodes WHERE subnet_id=? AND node_id=?", (sid, nid)
    ).fetchone()
    if row is None:
        return None
    return {"class": NodeClass(row[0]), "stake": int(row[1]), "rep": float(row[2]), "streak": row[3], "coldkey": row[4]}


def _note_reputation(
    db: sqlite3.Connection, sid: int, epoch: int, nid: int, before: float, after: float, reason: str
) -> None:
    if after != before:
        db.execute(
            "INSERT OR REPLACE INTO reputation_changes VALUES (?, ?, ?, ?, ?, ?)",
            (sid, epoch, nid, before, after, reason),
        )


def _penalise(state: ChainState, db: sqlite3.Connection, sid: int, nid: int, epoch: int, reason: str) -> None:
    row = db.execute("SELECT reputation FROM nodes WHERE subnet_id=? AND node_id=?", (sid, nid)).fetchone()
    if row is None:
        return
    after = max(0.0, float(row[0]) - state.config.reputation_penalty)
    db.execute("UPDATE nodes SET reputation=?, streak=0 WHERE subnet_id=? AND node_id=?", (after, sid, nid))
    _note_reputation(db, sid, epoch, nid, float(row[0]), after, reason)


def _record(db: sqlite3.Connection, sid: int, epoch: int, outcome: str, counts: tuple[int, int], block: int) -> None:
    attestors, validators = counts
    db.execute(
        "INSERT OR REPLACE INTO epoch_results VALUES (?, ?, ?, ?, ?, ?)",
        (sid, epoch, outcome, attestors, validators, block),
    )


def _reward(db: sqlite3.Connection, sid: int, epoch: int, nid: int, kind: str, amount: int) -> None:
    if amount <= 0:
        return
    row = db.execute("SELECT stake FROM nodes WHERE subnet_id=? AND node_id=?", (sid, nid)).fetchone()
    if row is None:
        return
    db.execute("UPDATE nodes SET stake=? WHERE subnet_id=? AND node_id=?", (str(int(row[0]) + amount), sid, nid))
    db.execute("INSERT OR REPLACE INTO rewards VALUES (?, ?, ?, ?, ?)", (sid, epoch, nid, kind, str(amount)))


def _finalise(state: ChainState, db: sqlite3.Connection, sid: int, epoch: int, new_epoch: int, block: int) -> None:
    """Settle `epoch` at the first block of `epoch + 1`."""
    cfg = state.config
    validator = state.elected(sid, epoch)
    if validator is None:
        return
    sub = state.submission(sid, epoch)
    snapshot = set(state.snapshot(sid, epoch))
    if sub is None:
        _penalise(state, db, sid, validator, epoch, "no_proposal")  # elected but proposed nothing
        _record(db, sid, epoch, "no_proposal", (0, len(snapshot)), block)
        return
    attestors = [n for n in sub.attestations if n in snapshot]
    a, n = len(attestors), max(1, len(snapshot))
    if a * 100 >= cfg.attestation_threshold_pct * n:
        _accept(state, db, sid, epoch, new_epoch, sub)
        _record(db, sid, epoch, "accepted", (a, len(snapshot)), block)
        return
    # Rejected: slash min(stake * 3.125% * (1 - ratio/0.66), max) and cut reputations.
    v = _get_node_row(db, sid, validator)
    if v is not None:
        pct = cfg.attestation_threshold_pct
        slash = v["stake"] * cfg.slash_bps_x1000 * (pct * n - 100 * a) // (100_000 * pct * n)
        slash = min(slash, cfg.max_slash)
        db.execute(
            "UPDATE nodes SET stake=? WHERE subnet_id=? AND node_id=?", (str(v["stake"] - slash), sid, validator)
        )
        db.execute("INSERT OR REPLACE INTO rewards VALUES (?, ?, ?, 'slash', ?)", (sid, epoch, validator, str(-slash)))
    for nid in sorted(set(attestors) | {validator}):
        _penalise(state, db, sid, nid, epoch, "proposal_rejected" if nid == validator else "attested_rejected")
    _record(db, sid, epoch, "rejected", (a, len(snapshot)), block)


def _accept(
    state: ChainState, db: sqlite3.Connection, sid: int, epoch: int, new_epoch: int, sub: ConsensusSubmission
) -> None:
    cfg = state.config
    scores = {e.node_id: e.score for e in sub.data}
    nodes = {
        r[0]: {"class": NodeClass(r[1]), "rep": float(r[2]), "streak": r[3]}
        for r in db.execute("SELECT node_id, class, reputation, streak FROM nodes WHERE subnet_id=?", (sid,))
    }
    # Node emission: Validator-class nodes in the data, in proportion to score / sum; only
    # for a subnet with delegate stake (delegate.py), as on Hypertensor.
    paid = {nid: s for nid, s in scores.items() if nid in nodes and nodes[nid]["class"] == NodeClass.VALIDATOR}
    total = sum(paid.values())
    if total > 0 and earns_node_emissions(state, db, sid):
        for nid, s in sorted(paid.items()):
            _reward(db, sid, epoch, nid, "emission", cfg.node_emission * s // total)
    _reward(db, sid, epoch, sub.validator_node_id, "validator", cfg.validator_base_reward)
    # Class progression (only through accepted epochs) and reputation.
    full = 1.0 - 1e-9
    for nid, st in nodes.items():
        cls, rep, streak = st["class"], st["rep"], st["streak"]
        reason = ""
        if cls == NodeClass.IDLE:
            # Idle nodes are dropped from the data by canonicalisation, so they rise by
            # staying registered through accepted epochs.
            streak += 1
            if streak >= cfg.idle_epochs:
                cls, streak = NodeClass.INCLUDED, 0
                db.execute(
                    "UPDATE nodes SET classified_epoch=? WHERE subnet_id=? AND node_id=?", (new_epoch, sid, nid)
                )
        elif cls >= NodeClass.INCLUDED:
            if nid not in scores:
                rep, streak, reason = max(0.0, rep - cfg.reputation_penalty), 0, "missing_from_scores"
            else:
                rep, reason = min(1.0, rep + cfg.reputation_gain), "scored"
                if cls == NodeClass.INCLUDED:
                    streak = streak + 1 if rep >= full else 0
                    if streak >= cfg.included_epochs:
                        cls, streak = NodeClass.VALIDATOR, 0
                        db.execute(
                            "UPDATE nodes SET classified_epoch=? WHERE subnet_id=? AND node_id=?",
                            (new_epoch, sid, nid),
                        )
        else:
            continue
        db.execute(
            "UPDATE nodes SET class=?, reputation=?, streak=? WHERE subnet_id=? AND node_id=?",
            (int(cls), rep, streak, sid, nid),
        )
        if reason:
            _note_reputation(db, sid, epoch, nid, st["rep"], rep, reason)


def _activate_queue(state: ChainState, db: sqlite3.Connection, sid: int, epoch: int) -> None:
    rows = db.execute(
        "SELECT node_id FROM nodes WHERE subnet_id=? AND class=? AND queue_epoch<=? ORDER BY node_id LIMIT ?",
        (sid, int(NodeClass.REGISTERED), epoch, state.config.churn_limit),
    ).fetchall()
    for (nid,) in rows:
        db.execute(
            "UPDATE nodes SET class=?, classified_epoch=?, streak=0 WHERE subnet_id=? AND node_id=?",
            (int(NodeClass.IDLE), epoch, sid, nid),
        )


def _remove_low_reputation(state: ChainState, db: sqlite3.Connection, sid: int, epoch: int) -> None:
    rows = db.execute(
        "SELECT node_id FROM nodes WHERE subnet_id=? AND reputation<?", (sid, state.config.min_reputation)
    ).fetchall()
    for (nid,) in rows:
        remove_node(state, db, sid, nid, epoch)


def remove_node(state: ChainState, db: sqlite3.Connection, sid: int, nid: int, epoch: int) -> None:
    """Delete the node; its stake starts unbonding back to the coldkey."""
    row = db.execute("SELECT coldkey, stake FROM nodes WHERE subnet_id=? AND node_id=?", (sid, nid)).fetchone()
    if row is None:
        return
    db.execute("DELETE FROM nodes WHERE subnet_id=? AND node_id=?", (sid, nid))
    if int(row[1]) > 0:
        db.execute(
            "INSERT INTO unbondings (account, amount, unlock_epoch) VALUES (?, ?, ?)",
            (row[0], row[1], epoch + state.config.unbonding_epochs),
        )
