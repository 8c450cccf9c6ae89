"""Consensus records in the DHT: keys, kinds and payload schemas.

Every consensus record lives under the key `mesh.v1/consensus/{subnet}/{epoch}/{kind}`
(reveals, which are cut into parts: `.../{kind}/{part}`) with subkey = the signer's peer id,
and its value is a `subnet.swarm.records.seal`-ed envelope whose payload carries `subnet`,
`epoch` and `block` (the chain block the signer wrote at). `epoch` is the epoch the record
is *written in* (a validator's reveal of its e-1 score set is written in e and says so in
`scores_epoch`). Payloads per kind:

- probe: `ProbeSpec.to_payload()` (seed, shape, dtype, blocks; inputs are regenerated locally)
- hoster_commit: `{commit: hex sha256(salt || encode_block_outputs(...)), blocks: [..], parts: n}`
  and optionally `precision`: the hoster's declared precision class (consensus.class_scoring;
  absent: float32); a reference_commit's `precision` is a list of classes, one output per class
  concatenated in each revealed block blob
- validator_commit: `{commit: hex sha256(salt || encode_score_set(...)), parts: n}`
- reference_commit / reference_reveal: like hoster_commit / hoster_reveal, written by a
  Validator-class node that holds the weights (its own outputs of the probe blocks)
- hoster_reveal / validator_reveal part: `{part: i, parts: n, data: <= CHUNK_CHARS chars}`; the
  parts concatenate to the canonical JSON of `{salt, outputs: {block: base64 tensor bytes}}`
  or `{salt, scores_epoch, scores: {peer id: int}}`.

Admission (who may write what, when) is `subnet.swarm.record_admission`; storing and
reading is `subnet.swarm.record_store`.
"""

from __future__ import annotations

import base64
import binascii
import json

from hivemind.dht.routing import DHTID

from chain.types import NodeClass
from consensus.class_scoring import hoster_class, reference_classes
from consensus.phases import RecordKind
from consensus.probe import ProbeSpec
from subnet.swarm.records import OpenedRecord, RecordError, canonical_json

KEY_PREFIX = "mesh.v1/consensus"
KINDS = tuple(k.value for k in RecordKind)

REQUIRED_CLASS: dict[str, NodeClass] = {
    RecordKind.PROBE.value: NodeClass.VALIDATOR,
    RecordKind.HOSTER_COMMIT.value: NodeClass.IDLE,
    RecordKind.HOSTER_REVEAL.value: NodeClass.IDLE,
    RecordKind.VALIDATOR_COMMIT.value: NodeClass.VALIDATOR,
    RecordKind.VALIDATOR_REVEAL.value: NodeClass.VALIDATOR,
    RecordKind.REFERENCE_COMMIT.value: NodeClass.VALIDATOR,
    RecordKind.REFERENCE_REVEAL.value: NodeClass.VALIDATOR,
}

DEFAULT_SIZE_LIMITS: dict[str, int] = {
    RecordKind.PROBE.value: 4 << 10,
    RecordKind.HOSTER_COMMIT.value: 4 << 10,
    RecordKind.HOSTER_REVEAL.value: 10 << 10,  # one part (CHUNK_CHARS) + envelope
    RecordKind.VALIDATOR_COMMIT.value: 2 << 10,
    RecordKind.VALIDATOR_REVEAL.value: 10 << 10,
    RecordKind.REFERENCE_COMMIT.value: 4 << 10,
    RecordKind.REFERENCE_REVEAL.value: 10 << 10,
}


class ConsensusRecordError(RecordError):
    """A consensus record failed admission (reason in the message)."""


# Reveals can be large (tensors, score sets). hivemind hands every store/get to its DHT
# process through a socketpair that the child reads in non-blocking mode; a message over
# 16 KiB is written in two pieces and the child can read the first alone, fail with EAGAIN
# and desynchronise the pipe (the DHT process then dies with EOFError). So reveals are cut
# into signed parts of at most CHUNK_CHARS characters, one DHT key per part index; commits
# announce the part count so readers know how many keys to fetch.
CHUNKED_KINDS = (RecordKind.HOSTER_REVEAL.value, RecordKind.VALIDATOR_REVEAL.value,
                 RecordKind.REFERENCE_REVEAL.value)
OUTPUT_COMMITS = (RecordKind.HOSTER_COMMIT.value, RecordKind.REFERENCE_COMMIT.value)  # commits to block outputs
OUTPUT_REVEALS = (RecordKind.HOSTER_REVEAL.value, RecordKind.REFERENCE_REVEAL.value)
CHUNK_CHARS = 8192
MAX_PARTS = 256


def consensus_key(subnet_id: int, epoch: int, kind: str | RecordKind, part: int | None = None) -> str:
    kind = kind.value if isinstance(kind, RecordKind) else kind
    if kind not in KINDS:
        raise ValueError(f"unknown consensus record kind {kind!r}")
    base = f"{KEY_PREFIX}/{int(subnet_id)}/{int(epoch)}/{kind}"
    if kind in CHUNKED_KINDS:
        if part is None or not 0 <= part < MAX_PARTS:
            raise ValueError(f"{kind} records are stored in parts 0..{MAX_PARTS - 1}")
        return f"{base}/{int(part)}"
    return base


def key_id_bytes(key: str) -> bytes:
    """The hashed key hivemind stores under (what a validator sees as `record.key`)."""
    return DHTID.generate(source=key).to_bytes()


def _int(payload: dict, name: str, lo: int = 0, hi: int = 1 << 63) -> int:
    v = payload.get(name)
    if type(v) is not int or not (lo <= v < hi):
        raise ConsensusRecordError(f"field {name!r} must be an int in [{lo}, {hi})")
    return v


def _hex(payload: dict, name: str, lo: int, hi: int) -> bytes:
    v = payload.get(name)
    try:
        raw = bytes.fromhex(v) if isinstance(v, str) else None
    except ValueError:
        raw = None
    if raw is None or not (lo <= len(raw) <= hi):
        raise ConsensusRecordError(f"field {name!r} must be hex of {lo}..{hi} bytes")
    return raw


def _fields(payload: dict, allowed: set[str]) -> None:
    if set(payload) != allowed:
        raise ConsensusRecordError(f"payload fields {sorted(payload)} != {sorted(allowed)}")


_COMMON = {"subnet", "epoch", "block"}
MAX_BLOCK_INDEX = 1 << 16


def check_payload_schema(kind: str, payload: dict) -> None:
    """Structure and bounds of each kind's payload (cheap; crypto checks are the duties')."""
    _int(payload, "subnet")
    _int(payload, "epoch")
    _int(payload, "block")
    if kind == RecordKind.PROBE.value:
        extra = {"version", "seed", "shape", "dtype", "blocks"}
        _fields(payload, _COMMON | extra)
        try:
            ProbeSpec.from_payload(payload)
        except ValueError as e:
            raise ConsensusRecordError(f"bad probe: {e}") from None
    elif kind in (*OUTPUT_COMMITS, RecordKind.VALIDATOR_COMMIT.value):
        extra = {"commit", "parts"} | ({"blocks"} if kind in OUTPUT_COMMITS else set())
        if kind in OUTPUT_COMMITS and "precision" in payload:  # the declared precision class(es), signed
            extra.add("precision")
            _check_precision(kind, payload)
        _fields(payload, _COMMON | extra)
        _hex(payload, "commit", 32, 32)
        _int(payload, "parts", 1, MAX_PARTS + 1)
        if "blocks" in extra:
            blocks = payload["blocks"]
            if (not isinstance(blocks, list) or not blocks or len(blocks) > 1024
                    or any(type(b) is not int or not 0 <= b < MAX_BLOCK_INDEX for b in blocks)
                    or blocks != sorted(set(blocks))):
                raise ConsensusRecordError("blocks must be a sorted list of unique block indices")
    elif kind in CHUNKED_KINDS:
        _fields(payload, _COMMON | {"part", "parts", "data"})
        parts = _int(payload, "parts", 1, MAX_PARTS + 1)
        _int(payload, "part", 0, parts)
        if not isinstance(payload["data"], str) or not payload["data"] or len(payload["data"]) > CHUNK_CHARS:
            raise ConsensusRecordError(f"part data must be a non-empty string of <= {CHUNK_CHARS} chars")
    else:
        raise ConsensusRecordError(f"unknown kind {kind!r}")


def _check_precision(kind: str, payload: dict) -> None:
    """A hoster commit declares one class (a string), a reference commit a list (consensus.class_scoring)."""
    try:
        if kind == RecordKind.HOSTER_COMMIT.value:
            hoster_class(payload)
        else:
            reference_classes(payload)
    except ValueError as e:
        raise ConsensusRecordError(str(e)[:200]) from None


def check_reveal_body(kind: str, body: object, epoch: int) -> dict:
    """Schema of a reassembled reveal: hoster {salt, outputs}; validator {salt, scores_epoch, scores}."""
    if not isinstance(body, dict):
        raise ConsensusRecordError("reveal body is not an object")
    if kind in OUTPUT_REVEALS:
        _fields(body, {"salt", "outputs"})
        _hex(body, "salt", 16, 64)
        outs = body["outputs"]
        if not isinstance(outs, dict) or not outs or len(outs) > 1024:
            raise ConsensusRecordError("outputs must be a non-empty object")
        for k, v in outs.items():
            if not k.isdigit() or str(int(k)) != k or int(k) >= MAX_BLOCK_INDEX or not isinstance(v, str):
                raise ConsensusRecordError("outputs must map block indices to base64 strings")
    elif kind == RecordKind.VALIDATOR_REVEAL.value:
        _fields(body, {"salt", "scores_epoch", "scores"})
        _hex(body, "salt", 16, 64)
        _int(body, "scores_epoch")
        if body["scores_epoch"] != epoch - 1:
            raise ConsensusRecordError("a validator reveal opens the commit of the previous epoch")
        if not isinstance(body["scores"], dict):
            raise ConsensusRecordError("scores must be an object")
    else:
        raise ConsensusRecordError(f"{kind} is not a reveal kind")
    return body


def split_reveal(body: dict) -> list[str]:
    """Canonical JSON of a reveal body cut into CHUNK_CHARS pieces."""
    text = canonical_json(body).decode()
    parts = [text[i:i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)]
    if len(parts) > MAX_PARTS:
        raise ValueError(f"reveal of {len(text)} chars needs more than {MAX_PARTS} parts")
    return parts


def join_reveal(kind: str, epoch: int, parts: list[OpenedRecord], expected_parts: int) -> dict:
    """Reassemble a signer's reveal from its parts (all from the same signer, checked by the caller)."""
    by_index = {r.payload["part"]: r for r in parts}
    if len(by_index) != expected_parts or any(r.payload["parts"] != expected_parts for r in parts) \
            or sorted(by_index) != list(range(expected_parts)):
        raise ConsensusRecordError(f"incomplete reveal: have parts {sorted(by_index)} of {expected_parts}")
    text = "".join(by_index[i].payload["data"] for i in range(expected_parts))
    try:
        body = json.loads(text, parse_constant=_no_constants)
    except ValueError as e:
        raise ConsensusRecordError(f"reveal is not JSON: {e}") from None
    return check_reveal_body(kind, body, epoch)


def _no_constants(name: str):
    raise ValueError(f"{name} is not allowed")


def decode_b64(text: str, max_bytes: int) -> bytes:
    """Strict base64 (no whitespace/garbage) with a size bound before decoding."""
    if not isinstance(text, str) or len(text) > (max_bytes * 4) // 3 + 4:
        raise ConsensusRecordError("base64 field too large")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConsensusRecordError("bad base64") from None
