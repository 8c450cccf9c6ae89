"""Signed record envelope for everything a node writes to the DHT.

hivemind signs DHT records with RSA only; our nodes sign with their Ed25519 node key,
so the signer of every record is a peer id the chain can look up. Records are JSON
(never pickle); the signature covers a canonical encoding of (version, kind, payload), and
the record itself must be exactly the canonical encoding of its fields (`open_record` re-encodes
and compares), so one signed record has exactly one byte string.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from keys.node_key import NodeKey, peer_id_from_public_key, verify

RECORD_VERSION = 1
MAX_RECORD_BYTES = 1 << 20  # hard cap for any record; kinds set tighter limits


class RecordError(ValueError):
    """A record is malformed, oversize, of the wrong kind, or badly signed."""


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON bytes: sorted keys, no whitespace, no NaN/Infinity."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


@dataclass(frozen=True)
class OpenedRecord:
    peer_id: str
    kind: str
    payload: dict
    public_key: bytes
    size: int


def _signed_part(kind: str, payload: dict) -> bytes:
    return canonical_json({"v": RECORD_VERSION, "kind": kind, "payload": payload})


def seal(key: NodeKey, kind: str, payload: dict) -> bytes:
    """Sign `payload` as a record of `kind` with the node key."""
    body = _signed_part(kind, payload)
    return canonical_json(
        {
            "v": RECORD_VERSION,
            "kind": kind,
            "payload": payload,
            "pk": key.public_key.hex(),
            "sig": key.sign(body).hex(),
        }
    )


def open_record(data: bytes, kind: str | None = None, *, max_bytes: int = MAX_RECORD_BYTES) -> OpenedRecord:
    """Parse and verify a sealed record; raise RecordError on any defect."""
    if not isinstance(data, (bytes, bytearray)):
        raise RecordError("record is not bytes")
    if len(data) > max_bytes:
        raise RecordError(f"record of {len(data)} bytes exceeds {max_bytes}")
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise RecordError(f"record is not JSON: {e}") from None
    if not isinstance(obj, dict) or set(obj) != {"v", "kind", "payload", "pk", "sig"}:
        raise RecordError("record has the wrong fields")
    if obj["v"] != RECORD_VERSION:
        raise RecordError(f"unsupported record version {obj['v']!r}")
    if not isinstance(obj["kind"], str) or (kind is not None and obj["kind"] != kind):
        raise RecordError(f"expected a {kind!r} record, got {obj['kind']!r}")
    if not isinstance(obj["payload"], dict):
        raise RecordError("record payload is not an object")
    try:
        pk = bytes.fromhex(obj["pk"])
        sig = bytes.fromhex(obj["sig"])
    except (ValueError, TypeError):
        raise RecordError("record key or signature is not hex") from None
    if len(pk) != 32 or len(sig) != 64:
        raise RecordError("record key or signature has the wrong length")
    try:
        body = _signed_part(obj["kind"], obj["payload"])
    except ValueError:
        raise RecordError("record payload is not canonical JSON") from None
    if not verify(pk, body, sig):
        raise RecordError("bad record signature")
    if canonical_json(obj) != bytes(data):
        # the same signed content in another byte order (reordered keys, spaces, escapes) is a
        # different DHT value: accepting it would let anyone re-store a record as a "new" one
        raise RecordError("record is not in canonical encoding")
    return OpenedRecord(peer_id_from_public_key(pk), obj["kind"], obj["payload"], pk, len(data))
