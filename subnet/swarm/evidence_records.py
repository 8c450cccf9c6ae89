"""Evidence against a hoster in the DHT: keys, admission (size, count, expiry caps), store and fetch.

An evidence body (`consensus.evidence.encode_evidence`: receipt + input prefix + signed
output, at most `MAX_EVIDENCE_BYTES`) is cut into parts of at most `CHUNK_CHARS` characters
(hivemind's DHT process mishandles larger messages, see `epoch_records`). Part `i` of the
evidence of receipt epoch `e` lives under `mesh.v1/evidence/{subnet}/{e}/{i}` with subkey
`{reporter peer id}/{digest[:16]}`, its value a sealed `evidence_part` record
`{subnet, epoch, accused, digest, part, parts, data}` signed by the reporter.

Reporters may be anyone (clients use fresh identities); the evidence carries the accused
hoster's own signature, so junk cannot be attributed to anyone. Storers admit a part only if
it is sealed and signed by the subkey's peer, within the size cap, under the key its payload
gives, for the chain's current or previous epoch, about a registered hoster (Idle or above),
with an expiry at most `max_ttl` ahead. Readers re-check every part, join, check the digest,
and keep at most `MAX_PER_REPORTER` bodies per reporter and `MAX_PER_EPOCH` per epoch
(hivemind cannot count subkeys per writer, so the count cap is applied where evidence is used).
"""

from __future__ import annotations

import hashlib
import logging
import re

from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from hivemind.utils import get_dht_time

from chain.types import ChainError, NodeClass
from keys.node_key import NodeKey
from subnet.logs import event
from subnet.swarm.chain_view import ConsensusRegistry
from subnet.swarm.epoch_records import CHUNK_CHARS, key_id_bytes
from subnet.swarm.record_admission import _unpack_bytes, _unpack_subkey
from subnet.swarm.records import OpenedRecord, RecordError, open_record, seal

log = logging.getLogger(__name__)

KEY_PREFIX = "mesh.v1/evidence"
KIND = "evidence_part"
MAX_PARTS = 48
MAX_EVIDENCE_BYTES = MAX_PARTS * CHUNK_CHARS
MAX_PART_RECORD_BYTES = 10 << 10
MAX_PER_REPORTER = 2
MAX_PER_EPOCH = 32
_HEX64 = re.compile(r"[0-9a-f]{64}")


class EvidenceRecordError(RecordError):
    """An evidence part failed admission (reason in the message)."""


def evidence_key(subnet_id: int, epoch: int, part: int) -> str:
    if not 0 <= part < MAX_PARTS:
        raise ValueError(f"evidence parts are 0..{MAX_PARTS - 1}")
    return f"{KEY_PREFIX}/{int(subnet_id)}/{int(epoch)}/{int(part)}"


def evidence_subkey(reporter: str, digest: str) -> str:
    return f"{reporter}/{digest[:16]}"


class EvidencePolicy:
    """Admission of evidence parts, shared by the hivemind validator and the read path."""

    def __init__(self, subnet_id: int, registry: ConsensusRegistry, *, max_ttl: float = 3600.0):
        self.subnet_id, self.registry, self.max_ttl = subnet_id, registry, max_ttl
        self._keys: dict[bytes, tuple[int, int]] = {}
        self._keys_epoch: int | None = None

    def known_key(self, key_bytes: bytes) -> tuple[int, int] | None:
        """(epoch, part) if `key_bytes` is one of our evidence keys near the chain's epoch."""
        try:
            epoch = self.registry.view().epoch
        except Exception:
            epoch = self._keys_epoch
            if epoch is None:
                return None
        if epoch != self._keys_epoch:
            self._keys = {key_id_bytes(evidence_key(self.subnet_id, e, p)): (e, p)
                          for e in range(max(0, epoch - 2), epoch + 2) for p in range(MAX_PARTS)}
            self._keys_epoch = epoch
        return self._keys.get(key_bytes)

    def check(self, value: bytes, subkey: str | None, *, key_bytes: bytes | None = None,
              expected: tuple[int, int] | None = None, expiration_time: float | None = None) -> OpenedRecord:
        try:
            opened = open_record(value, KIND, max_bytes=MAX_PART_RECORD_BYTES)
        except RecordError as e:
            raise EvidenceRecordError(str(e)) from None
        p = opened.payload
        if set(p) != {"subnet", "epoch", "accused", "digest", "part", "parts", "data"}:
            raise EvidenceRecordError("evidence part has the wrong fields")
        for name, hi in (("subnet", 1 << 32), ("epoch", 1 << 62), ("part", MAX_PARTS - 1), ("parts", MAX_PARTS)):
            if not isinstance(p[name], int) or isinstance(p[name], bool) or not 0 <= p[name] <= hi:
                raise EvidenceRecordError(f"evidence {name} out of range")
        if not p["part"] < p["parts"]:
            raise EvidenceRecordError("part index beyond the part count")
        if not isinstance(p["digest"], str) or not _HEX64.fullmatch(p["digest"]):
            raise EvidenceRecordError("digest must be 64 lowercase hex characters")
        if not isinstance(p["accused"], str) or not 0 < len(p["accused"]) <= 128:
            raise EvidenceRecordError("bad accused peer id")
        if not isinstance(p["data"], str) or not 0 < len(p["data"]) <= CHUNK_CHARS:
            raise EvidenceRecordError(f"part data must be 1..{CHUNK_CHARS} characters")
        if subkey != evidence_subkey(opened.peer_id, p["digest"]):
            raise EvidenceRecordError("subkey is not the signer's peer id and the digest")
        if p["subnet"] != self.subnet_id:
            raise EvidenceRecordError(f"evidence for subnet {p['subnet']}, we are {self.subnet_id}")
        if expected is not None and tuple(expected) != (p["epoch"], p["part"]):
            raise EvidenceRecordError(f"part is ({p['epoch']}, {p['part']}), expected {expected}")
        if key_bytes is not None and key_bytes != key_id_bytes(evidence_key(p["subnet"], p["epoch"], p["part"])):
            raise EvidenceRecordError("evidence stored under another key (replay?)")
        if expiration_time is not None and expiration_time > get_dht_time() + self.max_ttl:
            raise EvidenceRecordError("expiration too far in the future")
        view = self.registry.view()
        if not view.epoch - 1 <= p["epoch"] <= view.epoch + 1:
            raise EvidenceRecordError(f"evidence about epoch {p['epoch']}, chain is at epoch {view.epoch}")
        node = self.registry.node(p["accused"])
        if node is None or node.node_class < NodeClass.IDLE:
            raise EvidenceRecordError(f"accused {p['accused'][:64]} is not a registered hoster of the subnet")
        return opened


class EvidenceRecordValidator(RecordValidatorBase):
    """hivemind record validator for evidence keys; other keys pass through untouched."""

    def __init__(self, policy: EvidencePolicy):
        self.policy = policy
        self.rejected = 0

    def validate(self, record: DHTRecord) -> bool:
        try:
            try:
                value = _unpack_bytes(record.value, MAX_PART_RECORD_BYTES + 64)
                subkey = _unpack_subkey(record.subkey)
            except ValueError:
                value = subkey = None
            known = self.policy.known_key(record.key)
            if known is None:
                return True  # not an evidence key: not ours to judge
            if value is None:
                raise EvidenceRecordError("value under an evidence key is not a sealed record")
            self.policy.check(value, subkey, key_bytes=record.key, expiration_time=record.expiration_time)
            return True
        except EvidenceRecordError as e:
            self.rejected += 1
            event(log, "evidence_record_rejected", logging.DEBUG, reason=str(e)[:200])
            return False
        except Exception as e:  # chain outage or anything odd: reject, never take the DHT down
            self.rejected += 1
            event(log, "evidence_record_unverifiable", logging.WARNING, reason=f"{type(e).__name__}: {e}"[:200])
            return False

    @property
    def priority(self) -> int:
        return 9

    def merge_with(self, other: RecordValidatorBase) -> bool:
        return False


def publish_evidence(dht, key: NodeKey, subnet_id: int, epoch: int, accused: str, body: bytes, *,
                     ttl: float = 1800.0, timeout: float = 30.0) -> bool:
    """Store an evidence body in parts; True if every part was stored."""
    if len(body) > MAX_EVIDENCE_BYTES:
        raise ValueError(f"evidence of {len(body)} bytes exceeds {MAX_EVIDENCE_BYTES}")
    text = body.decode("ascii")
    digest = hashlib.sha256(body).hexdigest()
    chunks = [text[i:i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)]
    ok = True
    for i, chunk in enumerate(chunks):
        payload = {"subnet": subnet_id, "epoch": epoch, "accused": accused, "digest": digest, "part": i,
                   "parts": len(chunks), "data": chunk}
        try:
            fut = dht.store(evidence_key(subnet_id, epoch, i), seal(key, KIND, payload), get_dht_time() + ttl,
                            subkey=evidence_subkey(key.peer_id, digest), return_future=True)
            stored = fut.result(timeout=timeout)
            ok = ok and (all(stored.values()) if isinstance(stored, dict) else bool(stored))
        except Exception as e:
            event(log, "evidence_store_failed", logging.WARNING, error=f"{type(e).__name__}: {e}"[:200])
            return False
    event(log, "evidence_published", accused=accused, epoch=epoch, parts=len(chunks), ok=ok, digest=digest[:16])
    return ok


def _get(dht, policy: EvidencePolicy, epoch: int, part: int, timeout: float) -> dict[str, OpenedRecord]:
    found = dht.get(evidence_key(policy.subnet_id, epoch, part), latest=True, return_future=True).result(timeout)
    out: dict[str, OpenedRecord] = {}
    if found is None or not isinstance(found.value, dict):
        return out
    for subkey, item in found.value.items():
        value = getattr(item, "value", None)
        try:
            if not isinstance(value, bytes):
                raise EvidenceRecordError("value is not bytes")
            out[str(subkey)] = policy.check(value, subkey, expected=(epoch, part))
        except EvidenceRecordError as e:
            event(log, "evidence_record_dropped", logging.INFO, epoch=epoch, reason=str(e)[:200])
        except ChainError as e:
            event(log, "evidence_record_unverifiable", logging.WARNING, reason=str(e)[:200])
    return out


def fetch_evidence(dht, policy: EvidencePolicy, epoch: int, *,
                   timeout: float = 30.0) -> list[tuple[str, str, str, bytes]]:
    """Evidence bodies about receipt epoch `epoch`: `(reporter, accused, digest, body)`, sorted by
    (accused, digest), capped per reporter and per epoch; incomplete or inconsistent ones are logged."""
    heads = _get(dht, policy, epoch, 0, timeout)
    per_reporter: dict[str, int] = {}
    chosen = []
    for subkey, rec in sorted(heads.items(), key=lambda kv: (kv[1].payload["accused"], kv[1].payload["digest"])):
        if per_reporter.get(rec.peer_id, 0) >= MAX_PER_REPORTER or len(chosen) >= MAX_PER_EPOCH:
            event(log, "evidence_over_cap", reporter=rec.peer_id[-8:], epoch=epoch)
            continue
        per_reporter[rec.peer_id] = per_reporter.get(rec.peer_id, 0) + 1
        chosen.append((subkey, rec))
    parts: dict[int, dict[str, OpenedRecord]] = {0: heads}
    out = []
    for subkey, head in chosen:
        p = head.payload
        data = []
        for i in range(p["parts"]):
            if i not in parts:
                parts[i] = _get(dht, policy, epoch, i, timeout)
            rec = parts[i].get(subkey)
            same = ("accused", "digest", "parts")
            if rec is None or rec.peer_id != head.peer_id or any(rec.payload[k] != p[k] for k in same):
                data = None
                break
            data.append(rec.payload["data"])
        body = "".join(data).encode("utf-8") if data is not None else b""
        if data is None or hashlib.sha256(body).hexdigest() != p["digest"]:
            event(log, "evidence_incomplete", logging.INFO, reporter=head.peer_id[-8:], accused=p["accused"][-8:],
                  epoch=epoch)
            continue
        out.append((head.peer_id, p["accused"], p["digest"], body))
    return out
