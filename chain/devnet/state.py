"""The devnet chain's state and rules (a small Network pallet) over SQLite.

Every write runs in one SQLite transaction (WAL, synchronous=FULL) that is committed
before the caller returns, so whatever the HTTP server acknowledged survives a kill -9.
Rules follow ARCHITECTURE.md "Chain"; where that text leaves room the choice is written
next to the code. Amounts are ints (18 decimals) stored as decimal TEXT (> 2**63).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from eth_utils import is_hex_address, to_checksum_address

from chain.devnet.calls import CALL_HANDLERS
from chain.devnet.checks import address as _address
from chain.devnet.checks import fail as _fail
from chain.devnet.config import DevnetConfig, dev_accounts
from chain.devnet.tx import MAX_TX_BYTES, TX_DOMAIN, sign_tx, verify_signature
from chain.types import (
    ChainError,
    ConsensusSubmission,
    EpochInfo,
    NodeClass,
    ScoreEntry,
    SubnetInfo,
    SubnetNode,
    SubnetState,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (number INTEGER PRIMARY KEY, randomness BLOB NOT NULL, ts REAL NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (address TEXT PRIMARY KEY, balance TEXT NOT NULL, nonce INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS subnets (
  subnet_id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, owner TEXT NOT NULL, state TEXT NOT NULL,
  min_stake TEXT NOT NULL, max_stake TEXT NOT NULL, registered_block INTEGER NOT NULL,
  activated_block INTEGER, repo TEXT NOT NULL, description TEXT NOT NULL,
  initial_coldkeys TEXT NOT NULL, next_node_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
  subnet_id INTEGER NOT NULL, node_id INTEGER NOT NULL, coldkey TEXT NOT NULL, hotkey TEXT NOT NULL,
  peer_id TEXT NOT NULL, multiaddr TEXT NOT NULL, class INTEGER NOT NULL, stake TEXT NOT NULL,
  reputation REAL NOT NULL, registered_epoch INTEGER NOT NULL, classified_epoch INTEGER NOT NULL,
  queue_epoch INTEGER NOT NULL, streak INTEGER NOT NULL,
  PRIMARY KEY (subnet_id, node_id), UNIQUE (subnet_id, hotkey), UNIQUE (subnet_id, peer_id));
CREATE TABLE IF NOT EXISTS snapshots (subnet_id INTEGER, epoch INTEGER, node_id INTEGER,
  PRIMARY KEY (subnet_id, epoch, node_id));
CREATE TABLE IF NOT EXISTS elected (subnet_id INTEGER, epoch INTEGER, node_id INTEGER NOT NULL,
  PRIMARY KEY (subnet_id, epoch));
CREATE TABLE IF NOT EXISTS submissions (subnet_id INTEGER, epoch INTEGER, validator_node_id INTEGER NOT NULL,
  data TEXT NOT NULL, block INTEGER NOT NULL, PRIMARY KEY (subnet_id, epoch));
CREATE TABLE IF NOT EXISTS attestations (subnet_id INTEGER, epoch INTEGER, node_id INTEGER, block INTEGER NOT NULL,
  PRIMARY KEY (subnet_id, epoch, node_id));
CREATE TABLE IF NOT EXISTS epoch_results (subnet_id INTEGER, epoch INTEGER, outcome TEXT NOT NULL,
  attestors INTEGER NOT NULL, validators INTEGER NOT NULL, block INTEGER NOT NULL, PRIMARY KEY (subnet_id, epoch));
CREATE TABLE IF NOT EXISTS rewards (subnet_id INTEGER, epoch INTEGER, node_id INTEGER, kind TEXT,
  amount TEXT NOT NULL, PRIMARY KEY (subnet_id, epoch, node_id, kind));
CREATE TABLE IF NOT EXISTS unbondings (id INTEGER PRIMARY KEY AUTOINCREMENT, account TEXT NOT NULL,
  amount TEXT NOT NULL, unlock_epoch INTEGER NOT NULL);
"""


class ChainState:
    """Open (or create at genesis) the chain database at `path`."""

    def __init__(self, path: str | Path, config: DevnetConfig | None = None):
        self.path = str(path)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        stored = self._meta("config")
        if stored is None:
            self.config = config or DevnetConfig()
            self._genesis()
        else:
            # Chain-defining rules come from genesis; only the block interval may change.
            cfg = DevnetConfig.from_dict(json.loads(stored))
            if config is not None:
                cfg = DevnetConfig.from_dict({**cfg.to_dict(), "block_time": config.block_time})
            self.config = cfg
        self.chain_id: str = self._meta("chain_id") or ""

    # ---- plumbing -----------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One durable write transaction (committed with fsync before returning)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else row[0]

    def _set_meta(self, key: str, value: Any) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(value)))

    def _genesis(self) -> None:
        cfg = self.config
        r0 = hashlib.sha256(b"genesis:" + cfg.genesis_seed.encode()).digest()
        with self._tx() as db:
            self._set_meta("config", json.dumps(cfg.to_dict()))
            self._set_meta("chain_id", r0[:16].hex())
            self._set_meta("block", 0)
            self._set_meta("next_subnet_id", 1)
            db.execute("INSERT INTO blocks VALUES (0, ?, ?)", (r0, time.time()))
            for acct in dev_accounts(cfg.dev_accounts):
                db.execute("INSERT INTO accounts VALUES (?, ?, -1)", (acct.address, str(cfg.dev_balance)))

    # ---- reads --------------------------------------------------------------
    def block(self) -> int:
        with self._lock:
            return int(self._meta("block") or 0)

    def epoch_of(self, block: int) -> int:
        return block // self.config.epoch_length

    def epoch_info(self, now: float | None = None) -> EpochInfo:
        with self._lock:
            b = self.block()
            ts = self._db.execute("SELECT ts FROM blocks WHERE number=?", (b,)).fetchone()[0]
        L, bt = self.config.epoch_length, self.config.block_time
        in_epoch = b % L
        since = max(0.0, (time.time() if now is None else now) - ts)
        left = max(0.0, (L - in_epoch) * bt - min(since, bt))
        return EpochInfo(b // L, b, L, in_epoch / L, left, bt)

    def block_randomness(self, block: int) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT randomness FROM blocks WHERE number=?", (block,)).fetchone()
        return None if row is None else bytes(row[0])

    def epoch_randomness(self, subnet_id: int, epoch: int) -> bytes:
        """Fixed by the first block of the epoch: H(R_block, subnet, epoch)."""
        r = self.block_randomness(epoch * self.config.epoch_length)
        if r is None or epoch < 0:
            raise _fail("EpochNotStarted", f"epoch {epoch} has not started")
        return hashlib.sha256(b"epoch" + r + subnet_id.to_bytes(8, "big") + epoch.to_bytes(8, "big")).digest()

    def subnet(self, subnet_id: int) -> SubnetInfo:
        with self._lock:
            row = self._db.execute("SELECT * FROM subnets WHERE subnet_id=?", (subnet_id,)).fetchone()
        if row is None:
            raise _fail("UnknownSubnet", f"no subnet {subnet_id}")
        return SubnetInfo(
            subnet_id=row[0], name=row[1], owner=row[2], state=SubnetState(row[3]), min_stake=int(row[4]),
            max_stake=int(row[5]), registered_block=row[6], activated_block=row[7], repo=row[8], description=row[9],
        )  # fmt: skip

    def subnets(self) -> list[SubnetInfo]:
        with self._lock:
            ids = [r[0] for r in self._db.execute("SELECT subnet_id FROM subnets ORDER BY subnet_id")]
        return [self.subnet(i) for i in ids]

    _NODE_COLS = (
        "subnet_id, node_id, coldkey, hotkey, peer_id, class, stake, reputation,"
        " registered_epoch, classified_epoch, multiaddr"
    )

    @staticmethod
    def _node(row: tuple) -> SubnetNode:
        return SubnetNode(
            subnet_id=row[0], node_id=row[1], coldkey=row[2], hotkey=row[3], peer_id=row[4],
            node_class=NodeClass(row[5]), stake=int(row[6]), reputation=float(row[7]),
            registered_epoch=row[8], classified_epoch=row[9], multiaddr=row[10],
        )  # fmt: skip

    def _nodes_where(self, where: str, params: tuple) -> list[SubnetNode]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {self._NODE_COLS} FROM nodes WHERE {where} ORDER BY node_id", params
            ).fetchall()
        return [self._node(r) for r in rows]

    def nodes(self, subnet_id: int) -> list[SubnetNode]:
        self.subnet(subnet_id)
        return self._nodes_where("subnet_id=?", (subnet_id,))

    def node(self, subnet_id: int, node_id: int) -> SubnetNode | None:
        found = self._nodes_where("subnet_id=? AND node_id=?", (subnet_id, node_id))
        return found[0] if found else None

    def node_by_peer_id(self, subnet_id: int, peer_id: str) -> SubnetNode | None:
        found = self._nodes_where("subnet_id=? AND peer_id=?", (subnet_id, peer_id))
        return found[0] if found else None

    def node_by_hotkey(self, subnet_id: int, hotkey: str) -> SubnetNode | None:
        if not is_hex_address(hotkey):
            return None
        found = self._nodes_where("subnet_id=? AND hotkey=?", (subnet_id, to_checksum_address(hotkey)))
        return found[0] if found else None

    def elected(self, subnet_id: int, epoch: int) -> int | None:
        with self._lock:
            row = self._db.execute(
                "SELECT node_id FROM elected WHERE subnet_id=? AND epoch=?", (subnet_id, epoch)
            ).fetchone()
        return None if row is None else row[0]

    def snapshot(self, subnet_id: int, epoch: int) -> list[int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT node_id FROM snapshots WHERE subnet_id=? AND epoch=? ORDER BY node_id", (subnet_id, epoch)
            ).fetchall()
        return [r[0] for r in rows]

    def submission(self, subnet_id: int, epoch: int) -> ConsensusSubmission | None:
        with self._lock:
            row = self._db.execute(
                "SELECT validator_node_id, data, block FROM submissions WHERE subnet_id=? AND epoch=?",
                (subnet_id, epoch),
            ).fetchone()
            if row is None:
                return None
            att = self._db.execute(
                "SELECT node_id, block FROM attestations WHERE subnet_id=? AND epoch=? ORDER BY node_id",
                (subnet_id, epoch),
            ).fetchall()
        data = tuple(ScoreEntry(int(n), int(s)) for n, s in json.loads(row[1]))
        return ConsensusSubmission(subnet_id, epoch, row[0], data, {n: b for n, b in att}, row[2])

    def epoch_result(self, subnet_id: int, epoch: int) -> dict | None:
        with self._lock:
            row = self._db.execute(
                "SELECT outcome, attestors, validators, block FROM epoch_results WHERE subnet_id=? AND epoch=?",
                (subnet_id, epoch),
            ).fetchone()
            if row is None:
                return None
            rewards = self._db.execute(
                "SELECT node_id, kind, amount FROM rewards WHERE subnet_id=? AND epoch=? ORDER BY node_id, kind",
                (subnet_id, epoch),
            ).fetchall()
        return {
            "subnet_id": subnet_id,
            "epoch": epoch,
            "outcome": row[0],
            "attestors": row[1],
            "validators": row[2],
            "block": row[3],
            "rewards": [{"node_id": n, "kind": k, "amount": str(a)} for n, k, a in rewards],
        }

    def balance(self, address: str) -> int:
        if not is_hex_address(address):
            raise _fail("InvalidRequest", "not a 0x account address")
        with self._lock:
            row = self._db.execute(
                "SELECT balance FROM accounts WHERE address=?", (to_checksum_address(address),)
            ).fetchone()
        return 0 if row is None else int(row[0])

    def nonce(self, address: str) -> int:
        """The last nonce used by `address` (-1 if none): the next must be larger."""
        if not is_hex_address(address):
            raise _fail("InvalidRequest", "not a 0x account address")
        with self._lock:
            row = self._db.execute(
                "SELECT nonce FROM accounts WHERE address=?", (to_checksum_address(address),)
            ).fetchone()
        return -1 if row is None else int(row[0])

    def stake(self, subnet_id: int, hotkey: str) -> int:
        node = self.node_by_hotkey(subnet_id, hotkey)
        return 0 if node is None else node.stake

    def unbondings(self, address: str) -> list[dict]:
        with self._lock:
            rows = self._db.execute(
                "SELECT amount, unlock_epoch FROM unbondings WHERE account=? ORDER BY id",
                (to_checksum_address(address),),
            ).fetchall()
        return [{"amount": str(a), "unlock_epoch": e} for a, e in rows]

    # ---- block production ----------------------------------------------------
    def produce_block(self, now: float | None = None) -> int:
        """Append one block; at an epoch boundary finalise the last epoch and elect."""
        with self._tx() as db:
            b = int(self._meta("block")) + 1
            prev = db.execute("SELECT randomness FROM blocks WHERE number=?", (b - 1,)).fetchone()[0]
            r = hashlib.sha256(bytes(prev) + b.to_bytes(8, "big")).digest()
            db.execute("INSERT INTO blocks VALUES (?, ?, ?)", (b, r, time.time() if now is None else now))
            self._set_meta("block", b)
            if b % self.config.epoch_length == 0:
                self._on_epoch_start(db, b // self.config.epoch_length, b)
        return b

    def _on_epoch_start(self, db: sqlite3.Connection, epoch: int, block: int) -> None:
        for (sid,) in db.execute("SELECT subnet_id FROM subnets WHERE state=?", (SubnetState.ACTIVE.value,)).fetchall():
            self._finalise(db, sid, epoch - 1, epoch, block)
            self._activate_queue(db, sid, epoch)
            self._remove_low_reputation(db, sid, epoch)
            self._elect(db, sid, epoch)

    def _elect(self, db: sqlite3.Connection, sid: int, epoch: int) -> None:
        ids = [
            r[0]
            for r in db.execute(
                "SELECT node_id FROM nodes WHERE subnet_id=? AND class=? ORDER BY node_id",
                (sid, int(NodeClass.VALIDATOR)),
            )
        ]
        db.executemany("INSERT OR IGNORE INTO snapshots VALUES (?, ?, ?)", [(sid, epoch, i) for i in ids])
        if ids:
            r = self.epoch_randomness(sid, epoch)
            chosen = ids[int.from_bytes(r, "big") % len(ids)]
            db.execute("INSERT OR REPLACE INTO elected VALUES (?, ?, ?)", (sid, epoch, chosen))

    def _get_node_row(self, db: sqlite3.Connection, sid: int, nid: int) -> dict | None:
        row = db.execute(
            "SELECT class, stake, reputation, streak, coldkey FROM nodes WHERE subnet_id=? AND node_id=?", (sid, nid)
        ).fetchone()
        if row is None:
            return None
        return {"class": NodeClass(row[0]), "stake": int(row[1]), "rep": float(row[2]), "streak": row[3], "coldkey": row[4]}

    def _penalise(self, db: sqlite3.Connection, sid: int, nid: int) -> None:
        db.execute(
            "UPDATE nodes SET reputation=MAX(0.0, reputation-?), streak=0 WHERE subnet_id=? AND node_id=?",
            (self.config.reputation_penalty, sid, nid),
        )

    def _record(self, db, sid, epoch, outcome, attestors, validators, block) -> None:
        db.execute(
            "INSERT OR REPLACE INTO epoch_results VALUES (?, ?, ?, ?, ?, ?)",
            (sid, epoch, outcome, attestors, validators, block),
        )

    def _reward(self, db: sqlite3.Connection, sid: int, epoch: int, nid: int, kind: str, amount: int) -> None:
        if amount <= 0:
            return
        row = db.execute("SELECT stake FROM nodes WHERE subnet_id=? AND node_id=?", (sid, nid)).fetchone()
        if row is None:
            return
        db.execute("UPDATE nodes SET stake=? WHERE subnet_id=? AND node_id=?", (str(int(row[0]) + amount), sid, nid))
        db.execute("INSERT OR REPLACE INTO rewards VALUES (?, ?, ?, ?, ?)", (sid, epoch, nid, kind, str(amount)))

    def _finalise(self, db: sqlite3.Connection, sid: int, epoch: int, new_epoch: int, block: int) -> None:
        """Settle `epoch` at the first block of `epoch + 1`."""
        cfg = self.config
        validator = self.elected(sid, epoch)
        if validator is None:
            return
        sub = self.submission(sid, epoch)
        snapshot = set(self.snapshot(sid, epoch))
        if sub is None:
            self._penalise(db, sid, validator)  # elected but proposed nothing
            self._record(db, sid, epoch, "no_proposal", 0, len(snapshot), block)
            return
        attestors = [n for n in sub.attestations if n in snapshot]
        a, n = len(attestors), max(1, len(snapshot))
        if a * 100 >= cfg.attestation_threshold_pct * n:
            self._accept(db, sid, epoch, new_epoch, sub)
            self._record(db, sid, epoch, "accepted", a, len(snapshot), block)
            return
        # Rejected: slash min(stake * 3.125% * (1 - ratio/0.66), max) and cut reputations.
        v = self._get_node_row(db, sid, validator)
        if v is not None:
            pct = cfg.attestation_threshold_pct
            slash = v["stake"] * cfg.slash_bps_x1000 * (pct * n - 100 * a) // (100_000 * pct * n)
            slash = min(slash, cfg.max_slash)
            db.execute(
                "UPDATE nodes SET stake=? WHERE subnet_id=? AND node_id=?", (str(v["stake"] - slash), sid, validator)
            )
            db.execute("INSERT OR REPLACE INTO rewards VALUES (?, ?, ?, 'slash', ?)", (sid, epoch, validator, str(-slash)))
        for nid in set(attestors) | {validator}:
            self._penalise(db, sid, nid)
        self._record(db, sid, epoch, "rejected", a, len(snapshot), block)

    def _accept(self, db: sqlite3.Connection, sid: int, epoch: int, new_epoch: int, sub: ConsensusSubmission) -> None:
        cfg = self.config
        scores = {e.node_id: e.score for e in sub.data}
        nodes = {
            r[0]: {"class": NodeClass(r[1]), "rep": float(r[2]), "streak": r[3]}
            for r in db.execute("SELECT node_id, class, reputation, streak FROM nodes WHERE subnet_id=?", (sid,))
        }
        # Node emission: Validator-class nodes in the data, in proportion to score / sum.
        paid = {nid: s for nid, s in scores.items() if nid in nodes and nodes[nid]["class"] == NodeClass.VALIDATOR}
        total = sum(paid.values())
        if total > 0:
            for nid, s in sorted(paid.items()):
                self._reward(db, sid, epoch, nid, "emission", cfg.node_emission * s // total)
        self._reward(db, sid, epoch, sub.validator_node_id, "validator", cfg.validator_base_reward)
        # Class progression (only through accepted epochs) and reputation.
        full = 1.0 - 1e-9
        for nid, st in nodes.items():
            cls, rep, streak = st["class"], st["rep"], st["streak"]
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
                    rep, streak = max(0.0, rep - cfg.reputation_penalty), 0
                else:
                    rep = min(1.0, rep + cfg.reputation_gain)
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

    def _activate_queue(self, db: sqlite3.Connection, sid: int, epoch: int) -> None:
        rows = db.execute(
            "SELECT node_id FROM nodes WHERE subnet_id=? AND class=? AND queue_epoch<=? ORDER BY node_id LIMIT ?",
            (sid, int(NodeClass.REGISTERED), epoch, self.config.churn_limit),
        ).fetchall()
        for (nid,) in rows:
            db.execute(
                "UPDATE nodes SET class=?, classified_epoch=?, streak=0 WHERE subnet_id=? AND node_id=?",
                (int(NodeClass.IDLE), epoch, sid, nid),
            )

    def _remove_low_reputation(self, db: sqlite3.Connection, sid: int, epoch: int) -> None:
        rows = db.execute(
            "SELECT node_id FROM nodes WHERE subnet_id=? AND reputation<?", (sid, self.config.min_reputation)
        ).fetchall()
        for (nid,) in rows:
            self._remove_node(db, sid, nid, epoch)

    def _remove_node(self, db: sqlite3.Connection, sid: int, nid: int, epoch: int) -> None:
        """Delete the node; its stake starts unbonding back to the coldkey."""
        row = db.execute("SELECT coldkey, stake FROM nodes WHERE subnet_id=? AND node_id=?", (sid, nid)).fetchone()
        if row is None:
            return
        db.execute("DELETE FROM nodes WHERE subnet_id=? AND node_id=?", (sid, nid))
        if int(row[1]) > 0:
            db.execute(
                "INSERT INTO unbondings (account, amount, unlock_epoch) VALUES (?, ?, ?)",
                (row[0], row[1], epoch + self.config.unbonding_epochs),
            )

    # ---- signed transactions --------------------------------------------------
    def submit(self, body: bytes, signature: bytes) -> dict:
        """Verify, check the nonce, apply and commit one signed call.

        The nonce is consumed even when the call fails (like a failed extrinsic), so a
        signed request that failed once cannot be replayed after the state changes.
        """
        if len(body) > MAX_TX_BYTES:
            raise _fail("InvalidRequest", "transaction too large")
        try:
            tx = json.loads(body)
            if not isinstance(tx, dict):
                raise ValueError
            call, args, signer, nonce = tx["call"], tx["args"], tx["signer"], tx["nonce"]
            if not isinstance(call, str) or not isinstance(args, dict) or isinstance(nonce, bool):
                raise ValueError
            nonce = int(nonce) if isinstance(nonce, int) else None
            if nonce is None or nonce < 0:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise _fail("InvalidRequest", "malformed transaction body") from None
        if tx.get("chain") != self.chain_id:
            raise _fail("WrongChain", "transaction was signed for another chain")
        signer = _address(signer, "signer")
        if not verify_signature(signer, TX_DOMAIN + body, signature):
            raise _fail("BadSignature", "signature does not match the signer")
        handler = CALL_HANDLERS.get(call)
        if handler is None:
            raise _fail("UnknownCall", f"no call {call!r}")
        with self._tx() as db:
            row = db.execute("SELECT nonce FROM accounts WHERE address=?", (signer,)).fetchone()
            last = -1 if row is None else row[0]
            if nonce <= last:
                raise _fail("NonceReused", f"nonce {nonce} already used (last {last})")
            if row is None:
                db.execute("INSERT INTO accounts VALUES (?, '0', ?)", (signer, nonce))
            else:
                db.execute("UPDATE accounts SET nonce=? WHERE address=?", (nonce, signer))
            db.execute("SAVEPOINT call")
            try:
                result = handler(self, db, signer, args)
            except ChainError as e:
                db.execute("ROLLBACK TO call")
                db.execute("RELEASE call")
                failure = e
            else:
                db.execute("RELEASE call")
                failure = None
            block = int(self._meta("block"))
        if failure is not None:
            raise failure
        return {"ok": True, "block": block, "result": result}

    # helpers used by calls (inside the open transaction)
    def _now_epoch(self) -> int:
        return self.epoch_of(int(self._meta("block")))

    def _debit(self, db: sqlite3.Connection, address: str, amount: int) -> None:
        row = db.execute("SELECT balance FROM accounts WHERE address=?", (address,)).fetchone()
        bal = 0 if row is None else int(row[0])
        if bal < amount:
            raise _fail("InsufficientBalance", f"balance {bal} < {amount}")
        db.execute("UPDATE accounts SET balance=? WHERE address=?", (str(bal - amount), address))

    def _credit(self, db: sqlite3.Connection, address: str, amount: int) -> None:
        row = db.execute("SELECT balance FROM accounts WHERE address=?", (address,)).fetchone()
        if row is None:
            db.execute("INSERT INTO accounts VALUES (?, ?, -1)", (address, str(amount)))
        else:
            db.execute("UPDATE accounts SET balance=? WHERE address=?", (str(int(row[0]) + amount), address))

    def _owned_node(self, db: sqlite3.Connection, signer: str, sid: int, nid: int) -> SubnetNode:
        self.subnet(sid)
        node = self.node(sid, nid)
        if node is None:
            raise _fail("UnknownNode", f"no node {nid} in subnet {sid}")
        if node.coldkey != signer:
            raise _fail("WrongSigner", f"node {nid} belongs to coldkey {node.coldkey}, not {signer}")
        return node


__all__ = ["ChainState", "MAX_TX_BYTES", "TX_DOMAIN", "sign_tx", "verify_signature"]
