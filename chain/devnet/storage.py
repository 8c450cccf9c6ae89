"""The devnet chain's SQLite storage: schema, durable transactions and the meta table.

One connection shared by the HTTP threads and the block producer under one re-entrant
lock, so rule code that reads while a transaction is open sees its own writes.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCHEMA = """
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


class ChainDB:
    """The chain database at `path` (WAL, synchronous=FULL: a commit survives kill -9)."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """The connection, held for a consistent multi-statement read."""
        with self._lock:
            yield self._db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One durable write transaction (committed with fsync before returning)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: Any) -> None:
        """Write a meta value (inside the caller's open transaction)."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(value)))
