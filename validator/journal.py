"""What a validator must remember across a restart within an epoch, on disk before it acts.

A validator commits to its score set of epoch `e` (salted hash, in `e`), reveals it and, if
elected, proposes it on chain in `e + 1`. Held only in memory, a restart between the commit
and the reveal loses the salt (the reveal can never match: the validator scores 0 for `e`)
and the set it must propose (the elected validator proposes nothing and is penalised). So
before each of those acts `ValidatorDuty` writes the epoch's facts here: the committed set
and its salt, the commitment, the on-chain set built from it, and whether it committed,
revealed, proposed or attested; a restarted duty reads them back instead of starting blank.

One JSON file per (node, subnet) under the node's data dir, replaced atomically (write a
temporary file, fsync, rename, fsync the directory), so a kill at any instant leaves the old
or the new journal, never a torn one. Only the last `keep` epochs are kept; a file that is
too large, unreadable or for another node is set aside (renamed `.corrupt`), not trusted.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from subnet.logs import event

if TYPE_CHECKING:
    from validator.duty import ValidatorEpoch

log = logging.getLogger(__name__)

VERSION = 1
MAX_JOURNAL_BYTES = 32 * 1024 * 1024  # far above `keep` epochs of any real subnet's score sets


def journal_path(data_dir: str | os.PathLike, subnet_id: int) -> Path:
    return Path(data_dir) / f"validator-journal-subnet{subnet_id}.json"


class ValidatorJournal:
    """Per-epoch validator facts, persisted on every `save` (call it before acting on them)."""

    def __init__(self, path: str | os.PathLike, *, peer_id: str, subnet_id: int, keep: int = 8):
        self.path = Path(path)
        self.peer_id, self.subnet_id, self.keep = peer_id, subnet_id, keep
        self._lock = threading.Lock()
        self._epochs: dict[int, dict[str, Any]] = self._load()

    # ---- file ------------------------------------------------------------------------------------
    def _load(self) -> dict[int, dict[str, Any]]:
        if not self.path.exists():
            return {}
        try:
            if self.path.stat().st_size > MAX_JOURNAL_BYTES:
                raise ValueError(f"larger than {MAX_JOURNAL_BYTES} bytes")
            data = json.loads(self.path.read_text())
            if data.get("version") != VERSION or data.get("peer_id") != self.peer_id \
                    or data.get("subnet_id") != self.subnet_id:
                raise ValueError("written by another version, node or subnet")
            epochs = {int(e): dict(v) for e, v in data["epochs"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            aside = self.path.with_suffix(".corrupt")
            os.replace(self.path, aside)
            event(log, "validator_journal_set_aside", logging.WARNING, path=str(aside), error=str(e)[:200])
            return {}
        event(log, "validator_journal_loaded", path=str(self.path), epochs=sorted(epochs))
        return epochs

    def _write(self) -> None:
        body = json.dumps({"version": VERSION, "peer_id": self.peer_id, "subnet_id": self.subnet_id,
                           "epochs": {str(e): v for e, v in sorted(self._epochs.items())}}, sort_keys=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, body.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power cut
        finally:
            os.close(dir_fd)

    # ---- epochs ----------------------------------------------------------------------------------
    def has(self, epoch: int) -> bool:
        with self._lock:
            return epoch in self._epochs

    def entry(self, epoch: int) -> dict[str, Any] | None:
        with self._lock:
            e = self._epochs.get(epoch)
            return None if e is None else dict(e)

    def save(self, st: ValidatorEpoch) -> None:
        """Persist `st`'s restart-relevant facts now (before the act they allow)."""
        entry = {
            "score_salt": st.score_salt.hex(),
            "score_commit": st.score_commit.hex(),
            "hoster_fixed": None if st.hoster_fixed is None else dict(st.hoster_fixed),
            "proposal": None if st.proposal is None else [[int(n), int(s)] for n, s in st.proposal],
            "node_classes": {str(n): int(c) for n, c in st.node_classes.items()},
            "score_committed_block": st.score_committed_block,
            "score_revealed_block": st.score_revealed_block,
            "proposing": bool(getattr(st, "proposing", False)),
            "proposed": st.proposed,
            "attested": st.attested,
        }
        with self._lock:
            self._epochs[st.epoch] = entry
            for old in sorted(self._epochs)[: -self.keep]:
                del self._epochs[old]
            self._write()

    def restore(self, st: ValidatorEpoch) -> bool:
        """Fill a fresh `st` from the journal; True if there was something to restore."""
        d = self.entry(st.epoch)
        if d is None:
            return False
        try:
            salt, commit = bytes.fromhex(d.get("score_salt") or ""), bytes.fromhex(d.get("score_commit") or "")
            fixed, proposal = d.get("hoster_fixed"), d.get("proposal")
            fixed = None if fixed is None else {str(p): int(v) for p, v in fixed.items()}
            proposal = None if proposal is None else [(int(n), int(s)) for n, s in proposal]
            classes = {int(n): int(c) for n, c in (d.get("node_classes") or {}).items()}
            committed, revealed = _opt_int(d.get("score_committed_block")), _opt_int(d.get("score_revealed_block"))
        except (ValueError, TypeError, AttributeError) as e:
            event(log, "validator_journal_entry_ignored", logging.WARNING, epoch=st.epoch, error=str(e)[:200])
            return False
        st.score_salt, st.score_commit, st.hoster_fixed, st.proposal = salt, commit, fixed, proposal
        st.node_classes, st.score_committed_block, st.score_revealed_block = classes, committed, revealed
        st.proposed, st.attested = bool(d.get("proposed")), bool(d.get("attested"))
        if st.proposed:
            st.attestation = "proposer"
        elif st.attested:
            st.attestation = "restored: attested before a restart"
        st.proposing = bool(d.get("proposing"))
        event(log, "validator_epoch_restored", epoch=st.epoch, committed=st.score_committed_block,
              revealed=st.score_revealed_block, proposed=st.proposed, attested=st.attested)
        return True


def _opt_int(v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"expected an int, got {v!r}")
    return v
