"""Devnet delegate stake: accounts back a subnet; a subnet nobody backs earns no node emissions.

As on Hypertensor (where node emissions are paid only to subnets holding delegate stake), a
subnet's nodes are paid only while its delegate stake is at least `min_delegate_stake` of the
genesis config. The devnet keeps plain balances per (subnet, account) rather than
Hypertensor's shares, and pays delegators nothing: it exists to make the rule real, not to
model the delegators' yield. Removing delegate stake starts an unbonding like node stake.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from chain.devnet.checks import fail, u32, u128

if TYPE_CHECKING:
    from chain.devnet.state import ChainState

DELEGATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS delegate_stakes (subnet_id INTEGER NOT NULL, account TEXT NOT NULL,
  amount TEXT NOT NULL, PRIMARY KEY (subnet_id, account));
"""


def delegate_stake(db: sqlite3.Connection, subnet_id: int, account: str) -> int:
    row = db.execute(
        "SELECT amount FROM delegate_stakes WHERE subnet_id=? AND account=?", (subnet_id, account)
    ).fetchone()
    return 0 if row is None else int(row[0])


def total_delegate_stake(db: sqlite3.Connection, subnet_id: int) -> int:
    rows = db.execute("SELECT amount FROM delegate_stakes WHERE subnet_id=?", (subnet_id,)).fetchall()
    return sum(int(r[0]) for r in rows)


def earns_node_emissions(state: ChainState, db: sqlite3.Connection, subnet_id: int) -> bool:
    """Hypertensor's rule: no (or too little) delegate stake, no node emissions."""
    need = state.config.min_delegate_stake
    return need <= 0 or total_delegate_stake(db, subnet_id) >= need


def _set(db: sqlite3.Connection, subnet_id: int, account: str, amount: int) -> None:
    if amount:
        db.execute("INSERT OR REPLACE INTO delegate_stakes VALUES (?, ?, ?)", (subnet_id, account, str(amount)))
    else:
        db.execute("DELETE FROM delegate_stakes WHERE subnet_id=? AND account=?", (subnet_id, account))


def add_to_delegate_stake(st: ChainState, db: sqlite3.Connection, signer: str, a: dict) -> dict:
    sid = u32(a.get("subnet_id"), "subnet_id")
    amount = u128(a.get("amount"), "amount", 1)
    st.subnet(sid)
    st.debit(db, signer, amount)
    total = delegate_stake(db, sid, signer) + amount
    _set(db, sid, signer, total)
    return {"delegate_stake": str(total), "subnet_delegate_stake": str(total_delegate_stake(db, sid))}


def remove_delegate_stake(st: ChainState, db: sqlite3.Connection, signer: str, a: dict) -> dict:
    sid = u32(a.get("subnet_id"), "subnet_id")
    amount = u128(a.get("amount"), "amount", 1)
    st.subnet(sid)
    have = delegate_stake(db, sid, signer)
    if amount > have:
        raise fail("InsufficientStake", f"delegate stake {have} < {amount}")
    _set(db, sid, signer, have - amount)
    unlock = st.current_epoch() + st.config.unbonding_epochs
    db.execute("INSERT INTO unbondings (account, amount, unlock_epoch) VALUES (?, ?, ?)", (signer, str(amount), unlock))
    return {"delegate_stake": str(have - amount), "unlock_epoch": unlock}
