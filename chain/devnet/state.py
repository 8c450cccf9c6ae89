"""The devnet chain's state: genesis, typed reads, block production and signed calls.

Every write runs in one durable SQLite transaction (storage.py) committed before the
caller returns, so whatever the HTTP server acknowledged survives a kill -9. The rules
live beside it: epoch boundaries in epoch_rules.py, signed calls in calls.py; where
ARCHITECTURE.md "Chain" leaves room the choice is written next to the code. Amounts are
ints (18 decimals) stored as decimal TEXT (> 2**63).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

from eth_utils import is_hex_address, to_checksum_address

from chain.devnet.calls import CALL_HANDLERS
from chain.devnet.checks import address as _address, fail as _fail
from chain.devnet.config import DevnetConfig, dev_accounts
from chain.devnet.delegate import DELEGATE_SCHEMA, delegate_stake, total_delegate_stake
from chain.devnet.epoch_rules import REPUTATION_REASONS, REPUTATION_SCHEMA, remove_node, start_epoch
from chain.devnet.storage import ChainDB
from chain.devnet.tx import MAX_TX_BYTES, TX_DOMAIN, verify_signature
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


class ChainState:
    """Open (or create at genesis) the chain database at `path`."""

    def __init__(self, path: str | Path, config: DevnetConfig | None = None):
        self.path = str(path)
        self._store = ChainDB(self.path)
        with self._store.transaction() as db:
            db.execute(REPUTATION_SCHEMA)
            db.execute(DELEGATE_SCHEMA)
        stored = self._store.meta("config")
        if stored is None:
            self.config = config or DevnetConfig()
            self._genesis()
        else:
            # Chain-defining rules come from genesis; only the block interval may change.
            cfg = DevnetConfig.from_dict(json.loads(stored))
            if config is not None:
                cfg = DevnetConfig.from_dict({**cfg.to_dict(), "block_time": config.block_time})
            self.config = cfg
        self.chain_id: str = self._store.meta("chain_id") or ""

    def close(self) -> None:
        self._store.close()

    def _genesis(self) -> None:
        cfg = self.config
        r0 = hashlib.sha256(b"genesis:" + cfg.genesis_seed.encode()).digest()
        with self._store.transaction() as db:
            self._store.set_meta("config", json.dumps(cfg.to_dict()))
            self._store.set_meta("chain_id", r0[:16].hex())
            self._store.set_meta("block", 0)
            self._store.set_meta("next_subnet_id", 1)
            db.execute("INSERT INTO blocks VALUES (0, ?, ?)", (r0, time.time()))
            for acct in dev_accounts(cfg.dev_accounts):
                db.execute("INSERT INTO accounts VALUES (?, ?, -1)", (acct.address, str(cfg.dev_balance)))

    # ---- reads --------------------------------------------------------------
    def block(self) -> int:
        return int(self._store.meta("block") or 0)

    def epoch_of(self, block: int) -> int:
        return block // self.config.epoch_length

    def epoch_info(self, now: float | None = None) -> EpochInfo:
        with self._store.read() as db:
            b = self.block()
            ts = db.execute("SELECT ts FROM blocks WHERE number=?", (b,)).fetchone()[0]
        L, bt = self.config.epoch_length, self.config.block_time
        in_epoch = b % L
        since = max(0.0, (time.time() if now is None else now) - ts)
        left = max(0.0, (L - in_epoch) * bt - min(since, bt))
        return EpochInfo(b // L, b, L, in_epoch / L, left, bt)

    def block_randomness(self, block: int) -> bytes | None:
        with self._store.read() as db:
            row = db.execute("SELECT randomness FROM blocks WHERE number=?", (block,)).fetchone()
        return None if row is None else bytes(row[0])

    def epoch_randomness(self, subnet_id: int, epoch: int) -> bytes:
        """Fixed by the first block of the epoch: H(R_block, subnet, epoch)."""
        r = self.block_randomness(epoch * self.config.epoch_length)
        if r is None or epoch < 0:
            raise _fail("EpochNotStarted", f"epoch {epoch} has not started")
        return hashlib.sha256(b"epoch" + r + subnet_id.to_bytes(8, "big") + epoch.to_bytes(8, "big")).digest()

    def subnet(self, subnet_id: int) -> SubnetInfo:
        with self._store.read() as db:
            row = db.execute("SELECT * FROM subnets WHERE subnet_id=?", (subnet_id,)).fetchone()
        if row is None:
            raise _fail("UnknownSubnet", f"no subnet {subnet_id}")
        return SubnetInfo(
            subnet_id=row[0], name=row[1], owner=row[2], state=SubnetState(row[3]), min_stake=int(row[4]),
            max_stake=int(row[5]), registered_block=row[6], activated_block=row[7], repo=row[8], description=row[9],
        )  # fmt: skip

    def subnets(self) -> list[SubnetInfo]:
        with self._store.read() as db:
            ids = [r[0] for r in db.execute("SELECT subnet_id FROM subnets ORDER BY subnet_id")]
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
        with self._store.read() as db:
            rows = db.execute(
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
        with self._store.read() as db:
            row = db.execute(
                "SELECT node_id FROM elected WHERE subnet_id=? AND epoch=?", (subnet_id, epoch)
            ).fetchone()
        return None if row is None else row[0]

    def snapshot(self, subnet_id: int, epoch: int) -> list[int]:
        with self._store.read() as db:
            rows = db.execute(
                "SELECT node_id FROM snapshots WHERE subnet_id=? AND epoch=? ORDER BY node_id", (subnet_id, epoch)
            ).fetchall()
        return [r[0] for r in rows]

    def submission(self, subnet_id: int, epoch: int) -> ConsensusSubmission | None:
        with self._store.read() as db:
            row = db.execute(
                "SELECT validator_node_id, data, block FROM submissions WHERE subnet_id=? AND epoch=?",
                (subnet_id, epoch),
            ).fetchone()
            if row is None:
                return None
            att = db.execute(
                "SELECT node_id, block FROM attestations WHERE subnet_id=? AND epoch=? ORDER BY node_id",
                (subnet_id, epoch),
            ).fetchall()
        data = tuple(ScoreEntry(int(n), int(s)) for n, s in json.loads(row[1]))
        return ConsensusSubmission(subnet_id, epoch, row[0], data, {n: b for n, b in att}, row[2])

    def epoch_result(self, subnet_id: int, epoch: int) -> dict | None:
        with self._store.read() as db:
            row = db.execute(
                "SELECT outcome, attestors, validators, block FROM epoch_results WHERE subnet_id=? AND epoch=?",
                (subnet_id, epoch),
            ).fetchone()
            if row is None:
                return None
            rewards = db.execute(
                "SELECT node_id, kind, amount FROM rewards WHERE subnet_id=? AND epoch=? ORDER BY node_id, kind",
                (subnet_id, epoch),
            ).fetchall()
            changes = db.execute(
                "SELECT node_id, before, after, reason FROM reputation_changes WHERE subnet_id=? AND epoch=?"
                " ORDER BY node_id",
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
            "reputation_changes": [
                {"node_id": n, "before": b, "after": a, "reason": r, "detail": REPUTATION_REASONS.get(r, r)}
                for n, b, a, r in changes
            ],
        }

    def balance(self, address: str) -> int:
        if not is_hex_address(address):
            raise _fail("InvalidRequest", "not a 0x account address")
        with self._store.read() as db:
            row = db.execute(
                "SELECT balance FROM accounts WHERE address=?", (to_checksum_address(address),)
            ).fetchone()
        return 0 if row is None else int(row[0])

    def nonce(self, address: str) -> int:
        """The last nonce used by `address` (-1 if none): the next must be larger."""
        if not is_hex_address(address):
            raise _fail("InvalidRequest", "not a 0x account address")
        with self._store.read() as db:
            row = db.execute(
                "SELECT nonce FROM accounts WHERE address=?", (to_checksum_address(address),)
            ).fetchone()
        return -1 if row is None else int(row[0])

    def stake(self, subnet_id: int, hotkey: str) -> int:
        node = self.node_by_hotkey(subnet_id, hotkey)
        return 0 if node is None else node.stake

    def delegate_stake(self, subnet_id: int, address: str | None = None) -> int:
        """`address`'s delegate stake in the subnet, or the subnet's total when None."""
        with self._store.read() as db:
            if address is None:
                return total_delegate_stake(db, subnet_id)
            return delegate_stake(db, subnet_id, _address(address, "address"))

    def unbondings(self, address: str) -> list[dict]:
        with self._store.read() as db:
            rows = db.execute(
                "SELECT amount, unlock_epoch FROM unbondings WHERE account=? ORDER BY id",
                (to_checksum_address(address),),
            ).fetchall()
        return [{"amount": str(a), "unlock_epoch": e} for a, e in rows]

    # ---- block production ----------------------------------------------------
    def produce_block(self, now: float | None = None) -> int:
        """Append one block; at an epoch boundary finalise the last epoch and elect."""
        with self._store.transaction() as db:
            b = self.block() + 1
            prev = db.execute("SELECT randomness FROM blocks WHERE number=?", (b - 1,)).fetchone()[0]
            r = hashlib.sha256(bytes(prev) + b.to_bytes(8, "big")).digest()
            db.execute("INSERT INTO blocks VALUES (?, ?, ?)", (b, r, time.time() if now is None else now))
            self._store.set_meta("block", b)
            if b % self.config.epoch_length == 0:
                start_epoch(self, db, b // self.config.epoch_length, b)
        return b

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
        with self._store.transaction() as db:
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
            block = self.block()
        if failure is not None:
            raise failure
        return {"ok": True, "block": block, "result": result}

    # ---- used by the call handlers, inside the transaction `submit` opened --------
    def current_epoch(self) -> int:
        return self.epoch_of(self.block())

    def allocate_subnet_id(self) -> int:
        """The next subnet id, consumed (rolled back with the call if it fails)."""
        sid = int(self._store.meta("next_subnet_id") or 1)
        self._store.set_meta("next_subnet_id", sid + 1)
        return sid

    def debit(self, db: sqlite3.Connection, address: str, amount: int) -> None:
        row = db.execute("SELECT balance FROM accounts WHERE address=?", (address,)).fetchone()
        bal = 0 if row is None else int(row[0])
        if bal < amount:
            raise _fail("InsufficientBalance", f"balance {bal} < {amount}")
        db.execute("UPDATE accounts SET balance=? WHERE address=?", (str(bal - amount), address))

    def credit(self, db: sqlite3.Connection, address: str, amount: int) -> None:
        row = db.execute("SELECT balance FROM accounts WHERE address=?", (address,)).fetchone()
        if row is None:
            db.execute("INSERT INTO accounts VALUES (?, ?, -1)", (address, str(amount)))
        else:
            db.execute("UPDATE accounts SET balance=? WHERE address=?", (str(int(row[0]) + amount), address))

    def owned_node(self, signer: str, sid: int, nid: int) -> SubnetNode:
        """Node `nid` of subnet `sid`, which must belong to the coldkey `signer`."""
        self.subnet(sid)
        node = self.node(sid, nid)
        if node is None:
            raise _fail("UnknownNode", f"no node {nid} in subnet {sid}")
        if node.coldkey != signer:
            raise _fail("WrongSigner", f"node {nid} belongs to coldkey {node.coldkey}, not {signer}")
        return node

    def remove_node(self, db: sqlite3.Connection, sid: int, nid: int) -> None:
        """Delete the node now; its stake starts unbonding back to the coldkey."""
        remove_node(self, db, sid, nid, self.current_epoch())
