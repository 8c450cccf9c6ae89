"""Consensus records in the DHT: keys, payload schemas, and admission checks.

Every consensus record lives under the key `mesh.v1/consensus/{subnet}/{epoch}/{kind}`
(reveals, which are cut into parts: `.../{kind}/{part}`) with subkey = the signer's peer id,
and its value is a `subnet.swarm.records.seal`-ed envelope whose payload carries `subnet`,
`epoch` and `block` (the chain block the signer wrote at). `epoch` is the epoch the record
is *written in* (a validator's reveal of its e-1 score set is written in e and says so in
`scores_epoch`). Payloads per kind:

- probe: `ProbeSpec.to_payload()` (seed, shape, dtype, blocks; inputs are regenerated locally)
- hoster_commit: `{commit: hex sha256(salt || encode_block_outputs(...)), blocks: [..], parts: n}`
- validator_commit: `{commit: hex sha256(salt || encode_score_set(...)), parts: n}`
- hoster_reveal / validator_reveal part: `{part: i, parts: n, data: <= CHUNK_CHARS chars}`; the
  parts concatenate to the canonical JSON of `{salt, outputs: {block: base64 tensor bytes}}`
  or `{salt, scores_epoch, scores: {peer id: int}}`.

hivemind checks neither who writes a subkey nor value sizes, so `ConsensusRecordValidator`
(a hivemind `RecordValidatorBase`) admits a record only if:

- it is a well-formed sealed record with a valid Ed25519 signature, within the size limit
  of its kind, and the subkey equals the signer's peer id (so one record per signer, kind
  and epoch: that is the per-signer count limit; a newer record replaces the older one);
- the key matches the payload's (subnet, epoch, kind), the subnet is ours, and the epoch is
  the current one or the previous one (reads of last epoch's records; a replay under a newer
  epoch's key fails the key check because the payload is signed);
- the block the signer says it wrote at lies inside the kind's phase window of that epoch
  (with `grace_blocks`), and not in the future of the chain;
- the signer is a subnet node of the required class (hoster records: any active node,
  Idle or above; probes and validator records: Validator class), read from the chain and
  cached per epoch; before p=0.10 only the elected validator may post the probe, and a
  probe's seed must equal the one derived from the chain randomness;
- the expiration is not beyond `max_ttl` (hivemind does not cap it).

hivemind applies the validator both when a peer asks us to store a record and when a peer
returns records to our `get`, so the checks are stateless functions of (record, chain
state): a record accepted once stays acceptable for readers (hivemind drops a peer's whole
dictionary on read if one entry fails). Storing peers refuse records that claim a block outside
the window or in the future; a late writer that backdates its claim is defeated by readers, who
freeze what they have seen one grace block after a window closes (the duties do that).
`fetch_records` re-applies all checks on read.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import msgpack
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from hivemind.utils import get_dht_time

from chain.base import Chain
from chain.types import ChainError, NodeClass, SubnetNode
from consensus.phases import PROBE_ELECTED_ONLY_END, RecordKind, block_window, ceil_fraction
from consensus.probe import ProbeSpec, probe_seed
from keys.node_key import NodeKey
from subnet.logs import event
from subnet.swarm.records import OpenedRecord, RecordError, canonical_json, open_record, seal

log = logging.getLogger(__name__)

KEY_PREFIX = "mesh.v1/consensus"
KINDS = tuple(k.value for k in RecordKind)

REQUIRED_CLASS: dict[str, NodeClass] = {
    RecordKind.PROBE.value: NodeClass.VALIDATOR,
    RecordKind.HOSTER_COMMIT.value: NodeClass.IDLE,
    RecordKind.HOSTER_REVEAL.value: NodeClass.IDLE,
    RecordKind.VALIDATOR_COMMIT.value: NodeClass.VALIDATOR,
    RecordKind.VALIDATOR_REVEAL.value: NodeClass.VALIDATOR,
}

DEFAULT_SIZE_LIMITS: dict[str, int] = {
    RecordKind.PROBE.value: 4 << 10,
    RecordKind.HOSTER_COMMIT.value: 4 << 10,
    RecordKind.HOSTER_REVEAL.value: 10 << 10,  # one part (CHUNK_CHARS) + envelope
    RecordKind.VALIDATOR_COMMIT.value: 2 << 10,
    RecordKind.VALIDATOR_REVEAL.value: 10 << 10,
}


class ConsensusRecordError(RecordError):
    """A consensus record failed admission (reason in the message)."""


# Reveals can be large (tensors, score sets). hivemind hands every store/get to its DHT
# process through a socketpair that the child reads in non-blocking mode; a message over
# 16 KiB is written in two pieces and the child can read the first alone, fail with EAGAIN
# and desynchronise the pipe (the DHT process then dies with EOFError). So reveals are cut
# into signed parts of at most CHUNK_CHARS characters, one DHT key per part index; commits
# announce the part count so readers know how many keys to fetch.
CHUNKED_KINDS = (RecordKind.HOSTER_REVEAL.value, RecordKind.VALIDATOR_REVEAL.value)
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


# ---- chain view ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EpochView:
    """The chain's position: epoch, block, and where that block sits in the epoch."""

    epoch: int
    block: int
    blocks_per_epoch: int
    block_in_epoch: int
    block_time: float = 1.0

    @property
    def progress(self) -> float:
        return self.block_in_epoch / self.blocks_per_epoch

    def epoch_start(self, epoch: int) -> int:
        """First block of `epoch` (epochs are contiguous runs of `blocks_per_epoch` blocks)."""
        return self.block - self.block_in_epoch + (epoch - self.epoch) * self.blocks_per_epoch

    @classmethod
    def from_epoch_info(cls, info) -> EpochView:
        return cls(info.epoch, info.block, info.blocks_per_epoch, info.block_in_epoch, info.block_time)


class ConsensusRegistry(Protocol):
    """What admission needs from the chain (cached by the implementation)."""

    def view(self) -> EpochView: ...

    def node(self, peer_id: str) -> SubnetNode | None: ...

    def elected_peer(self, epoch: int) -> str | None: ...

    def randomness(self, epoch: int) -> bytes | None: ...

    def nodes(self) -> dict[str, SubnetNode]: ...


class ChainRegistry:
    """`ConsensusRegistry` over a `chain.Chain`, safe to use inside hivemind's DHT process.

    The chain client is built lazily per process from `chain_factory` (hivemind forks its DHT
    process; an HTTP connection pool must not be shared across a fork). The epoch view is
    refreshed at most every `view_ttl` seconds (default: half a block); the node list once
    per epoch, plus at most once per `miss_refresh` seconds when an unknown peer shows up
    (a node registered mid-epoch), so unregistered spammers cannot hammer the chain.
    """

    def __init__(self, chain_factory: Callable[[], Chain], subnet_id: int, *, view_ttl: float | None = None,
                 miss_refresh: float = 2.0):
        self._factory = chain_factory
        self.subnet_id = subnet_id
        self._view_ttl = view_ttl
        self._miss_refresh = miss_refresh
        self._pid: int | None = None
        self._owner_pid = os.getpid()
        self._chain: Chain | None = None
        self._lock = threading.RLock()
        self._view: EpochView | None = None
        self._view_at = 0.0
        self._nodes_epoch: int | None = None
        self._nodes: dict[str, SubnetNode] = {}
        self._nodes_at = 0.0
        self._elected: dict[int, str | None] = {}
        self._randomness: dict[int, bytes] = {}

    def __getstate__(self):  # picklable for spawn-started DHT processes: drop live clients
        state = self.__dict__.copy()
        state.update(_chain=None, _pid=None, _lock=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.RLock()

    @property
    def chain(self) -> Chain:
        if self._chain is None or self._pid != os.getpid():
            self._chain = self._factory()
            if self._pid is None and os.getpid() != self._owner_pid:
                probe = self._factory()  # first use in a forked process: is this really a factory?
                if probe is self._chain:
                    event(log, "chain_client_shared_across_fork", logging.WARNING,
                          hint="pass a factory that builds a new chain client to make_record_validator")
                else:
                    probe.close()
            self._pid = os.getpid()
        return self._chain

    def view(self) -> EpochView:
        with self._lock:
            now = time.monotonic()
            ttl = self._view_ttl if self._view_ttl is not None else (self._view.block_time / 2 if self._view else 0)
            if self._view is None or now - self._view_at >= ttl:
                self._view = EpochView.from_epoch_info(self.chain.get_epoch_info(self.subnet_id))
                self._view_at = now
            return self._view

    def _refresh_nodes(self, epoch: int) -> None:
        self._nodes = {n.peer_id: n for n in self.chain.get_subnet_nodes(self.subnet_id)}
        self._nodes_epoch = epoch
        self._nodes_at = time.monotonic()

    def node(self, peer_id: str) -> SubnetNode | None:
        with self._lock:
            epoch = self.view().epoch
            if self._nodes_epoch != epoch:
                self._refresh_nodes(epoch)
            found = self._nodes.get(peer_id)
            if found is None and time.monotonic() - self._nodes_at >= self._miss_refresh:
                self._refresh_nodes(epoch)
                found = self._nodes.get(peer_id)
            return found

    def nodes(self) -> dict[str, SubnetNode]:
        with self._lock:
            epoch = self.view().epoch
            if self._nodes_epoch != epoch:
                self._refresh_nodes(epoch)
            return dict(self._nodes)

    def elected_peer(self, epoch: int) -> str | None:
        with self._lock:
            if epoch in self._elected and self._elected[epoch] is not None:
                return self._elected[epoch]
            node_id = self.chain.get_elected_validator(self.subnet_id, epoch)
            peer = None
            if node_id is not None:
                by_id = {n.node_id: p for p, n in self.nodes().items()}
                peer = by_id.get(node_id)
                if peer is None:
                    self._refresh_nodes(self.view().epoch)
                    peer = {n.node_id: p for p, n in self._nodes.items()}.get(node_id)
            self._elected[epoch] = peer
            for old in [e for e in self._elected if e < epoch - 4]:
                del self._elected[old]
            return peer

    def randomness(self, epoch: int) -> bytes | None:
        with self._lock:
            if epoch not in self._randomness:
                self._randomness[epoch] = self.chain.get_epoch_randomness(self.subnet_id, epoch)
                for old in [e for e in self._randomness if e < epoch - 4]:
                    del self._randomness[old]
            return self._randomness[epoch]


# ---- payload schemas ---------------------------------------------------------------------------------


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
    elif kind in (RecordKind.HOSTER_COMMIT.value, RecordKind.VALIDATOR_COMMIT.value):
        extra = {"commit", "parts"} | ({"blocks"} if kind == RecordKind.HOSTER_COMMIT.value else set())
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


def check_reveal_body(kind: str, body: object, epoch: int) -> dict:
    """Schema of a reassembled reveal: hoster {salt, outputs}; validator {salt, scores_epoch, scores}."""
    if not isinstance(body, dict):
        raise ConsensusRecordError("reveal body is not an object")
    if kind == RecordKind.HOSTER_REVEAL.value:
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
    import json

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


# ---- admission -------------------------------------------------------------------------------------


class ConsensusRecordPolicy:
    """The admission rules, shared by the hivemind validator and the read path."""

    def __init__(self, subnet_id: int, registry: ConsensusRegistry, *, grace_blocks: int = 1,
                 size_limits: dict[str, int] | None = None, max_ttl: float = 3600.0):
        self.subnet_id = subnet_id
        self.registry = registry
        self.grace_blocks = grace_blocks
        self.size_limits = {**DEFAULT_SIZE_LIMITS, **(size_limits or {})}
        self.max_ttl = max_ttl
        self._key_cache: dict[bytes, tuple[int, str]] = {}
        self._key_cache_epoch: int | None = None

    def known_key(self, key_bytes: bytes) -> tuple[int, str] | None:
        """(epoch, kind) if `key_bytes` is one of our consensus keys near the current epoch.

        Works from the last known epoch when the chain is unreachable, so a chain outage never
        blocks records that are not ours (announcements etc.).
        """
        try:
            epoch = self.registry.view().epoch
        except Exception:
            epoch = self._key_cache_epoch
            if epoch is None:
                return None
        if self._key_cache_epoch != epoch:
            self._key_cache = {
                key_id_bytes(consensus_key(self.subnet_id, e, k, part)): (e, k)
                for e in range(max(0, epoch - 2), epoch + 2)
                for k in KINDS
                for part in (range(MAX_PARTS) if k in CHUNKED_KINDS else (None,))
            }
            self._key_cache_epoch = epoch
        return self._key_cache.get(key_bytes)

    def check(self, value: bytes, subkey: str | None, *, key_bytes: bytes | None = None,
              expected: tuple | None = None, expiration_time: float | None = None) -> OpenedRecord:
        """Return the opened record or raise ConsensusRecordError with the reason."""
        max_size = max(self.size_limits.values())
        try:
            opened = open_record(value, max_bytes=max_size)
        except RecordError as e:
            raise ConsensusRecordError(str(e)) from None
        kind = opened.kind
        if kind not in KINDS:
            raise ConsensusRecordError(f"not a consensus record kind: {kind!r}")
        if opened.size > self.size_limits[kind]:
            raise ConsensusRecordError(f"{kind} record of {opened.size} bytes exceeds {self.size_limits[kind]}")
        if subkey != opened.peer_id:
            raise ConsensusRecordError("subkey is not the signer's peer id")
        payload = opened.payload
        check_payload_schema(kind, payload)
        subnet, epoch, block = payload["subnet"], payload["epoch"], payload["block"]
        if subnet != self.subnet_id:
            raise ConsensusRecordError(f"record for subnet {subnet}, we are {self.subnet_id}")
        if expected is not None and tuple(expected[:2]) != (epoch, kind):
            raise ConsensusRecordError(f"record is ({epoch}, {kind}), expected {expected}")
        part = payload.get("part") if kind in CHUNKED_KINDS else None
        if expected is not None and len(expected) > 2 and expected[2] != part:
            raise ConsensusRecordError(f"record is part {part}, expected part {expected[2]}")
        if key_bytes is not None and key_bytes != key_id_bytes(consensus_key(subnet, epoch, kind, part)):
            raise ConsensusRecordError("record stored under another key (replay?)")
        if expiration_time is not None and expiration_time > get_dht_time() + self.max_ttl:
            raise ConsensusRecordError("expiration too far in the future")

        view = self.registry.view()
        near_end = view.block_in_epoch >= view.blocks_per_epoch - self.grace_blocks
        if not (view.epoch - 1 <= epoch <= view.epoch or (epoch == view.epoch + 1 and near_end)):
            raise ConsensusRecordError(f"record for epoch {epoch}, chain is at epoch {view.epoch}")
        first, last = block_window(kind, view.epoch_start(epoch), view.blocks_per_epoch)
        if not (first - self.grace_blocks <= block <= last + self.grace_blocks):
            raise ConsensusRecordError(f"{kind} written at block {block}, outside its window [{first}, {last}]")
        if block > view.block + self.grace_blocks:
            raise ConsensusRecordError(f"record claims future block {block} (chain at {view.block})")

        node = self.registry.node(opened.peer_id)
        need = REQUIRED_CLASS[kind]
        if node is None:
            raise ConsensusRecordError(f"signer {opened.peer_id} is not a node of subnet {self.subnet_id}")
        if node.node_class < need:
            raise ConsensusRecordError(f"signer class {node.node_class.name} < required {need.name}")
        if kind == RecordKind.PROBE.value:
            self._check_probe(opened, view)
        return opened

    def _check_probe(self, opened: OpenedRecord, view: EpochView) -> None:
        payload = opened.payload
        epoch = payload["epoch"]
        randomness = self.registry.randomness(epoch)
        if randomness is None or bytes.fromhex(payload["seed"]) != probe_seed(randomness, self.subnet_id, epoch):
            raise ConsensusRecordError("probe seed does not match the chain randomness")
        first_open = block_window(RecordKind.PROBE, view.epoch_start(epoch), view.blocks_per_epoch)[0]
        elected_only_end = first_open + ceil_fraction(PROBE_ELECTED_ONLY_END, view.blocks_per_epoch)
        if payload["block"] < elected_only_end and self.registry.elected_peer(epoch) != opened.peer_id:
            raise ConsensusRecordError("before p=0.10 only the elected validator may post the probe")


class ConsensusRecordValidator(RecordValidatorBase):
    """hivemind record validator for consensus keys; other keys pass through untouched.

    Rejections are logged and the record is dropped; the node keeps running (exceptions,
    including chain outages, become rejections of consensus records only).
    """

    def __init__(self, policy: ConsensusRecordPolicy):
        self.policy = policy
        self.rejected = 0

    def validate(self, record: DHTRecord) -> bool:
        try:
            value = _unpack_bytes(record.value, max(self.policy.size_limits.values()) + 64)
            subkey = _unpack_subkey(record.subkey)
        except ValueError:
            value = subkey = None
        try:
            if value is None or not value.startswith(b"{"):
                known = self.policy.known_key(record.key)
                if known is None:
                    return True  # not a consensus record: not ours to judge
                raise ConsensusRecordError("value under a consensus key is not a sealed record")
            try:
                opened_kind = _peek_kind(value)
            except ValueError:
                opened_kind = None
            if opened_kind not in KINDS:
                if self.policy.known_key(record.key) is None:
                    return True
                raise ConsensusRecordError("value under a consensus key is not a consensus record")
            self.policy.check(value, subkey, key_bytes=record.key, expiration_time=record.expiration_time)
            return True
        except ConsensusRecordError as e:
            self.rejected += 1
            event(log, "consensus_record_rejected", logging.DEBUG, reason=str(e)[:200])
            return False
        except (ChainError, OSError) as e:
            self.rejected += 1
            event(log, "consensus_record_unverifiable", logging.WARNING, reason=f"{type(e).__name__}: {e}"[:200])
            return False
        except Exception as e:  # never let a malformed record take the DHT down
            self.rejected += 1
            event(log, "consensus_record_error", logging.WARNING, reason=f"{type(e).__name__}: {e}"[:200])
            return False

    @property
    def priority(self) -> int:
        return 10

    def merge_with(self, other: RecordValidatorBase) -> bool:
        return False


def _unpack_bytes(data: bytes, max_len: int) -> bytes | None:
    """hivemind msgpack-serializes values; ours are plain bytes."""
    if len(data) > max_len + 16:
        raise ValueError("value too large")
    try:
        obj = msgpack.unpackb(data, raw=False, max_bin_len=max_len, max_str_len=max_len, max_array_len=16,
                              max_map_len=16, max_ext_len=0)
    except Exception:
        raise ValueError("not msgpack") from None
    return obj if isinstance(obj, bytes) else None


def _unpack_subkey(data: bytes) -> str | None:
    try:
        obj = msgpack.unpackb(data, raw=False, max_str_len=256, max_bin_len=256, max_ext_len=0)
    except Exception:
        raise ValueError("bad subkey") from None
    return obj if isinstance(obj, str) else None


def _peek_kind(value: bytes) -> str | None:
    import json

    try:
        obj = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("not json") from None
    return obj.get("kind") if isinstance(obj, dict) else None


# ---- write and read helpers ------------------------------------------------------------------------


def record_ttl(view: EpochView, epochs: float = 3.0) -> float:
    """Records must outlive the next epoch (validator reveals, late readers), not much more."""
    return max(30.0, epochs * view.blocks_per_epoch * view.block_time)


class DHTUnavailableError(RuntimeError):
    """A DHT read did not answer in time (or the DHT is down): retry later, do not treat as empty."""


DHT_TIMEOUT = 10.0  # hivemind calls have no timeout of their own; a dead DHT must not hang a duty


def store_record(dht, node_key: NodeKey, subnet_id: int, epoch: int, kind: str | RecordKind, payload: dict,
                 *, block: int, ttl: float, timeout: float = DHT_TIMEOUT) -> bool:
    """Seal `payload` (+ subnet, epoch, block) and store it under our subkey. True if stored."""
    kind = kind.value if isinstance(kind, RecordKind) else kind
    if kind in CHUNKED_KINDS and "part" not in payload:
        raise ValueError(f"{kind} bodies go through store_reveal (they are stored in parts)")
    body = {**payload, "subnet": subnet_id, "epoch": epoch, "block": block}
    value = seal(node_key, kind, body)
    return store_sealed(dht, consensus_key(subnet_id, epoch, kind, payload.get("part")), node_key.peer_id, value,
                        ttl=ttl, timeout=timeout, kind=kind, epoch=epoch, block=block)


def store_reveal(dht, node_key: NodeKey, subnet_id: int, epoch: int, kind: str | RecordKind, body: dict, *,
                 block: int, ttl: float, timeout: float = DHT_TIMEOUT) -> bool:
    """Store a reveal body as signed parts (see CHUNK_CHARS). True if every part was stored."""
    kind = kind.value if isinstance(kind, RecordKind) else kind
    chunks = split_reveal(body)
    return all([
        store_record(dht, node_key, subnet_id, epoch, kind, {"part": i, "parts": len(chunks), "data": chunk},
                     block=block, ttl=ttl, timeout=timeout)
        for i, chunk in enumerate(chunks)
    ])


def reveal_parts(body: dict) -> int:
    """How many parts `store_reveal` will use for `body` (announced in the commit)."""
    return len(split_reveal(body))


def fetch_reveals(dht, policy: ConsensusRecordPolicy, epoch: int, kind: str | RecordKind,
                  parts_by_signer: dict[str, int], *, timeout: float = DHT_TIMEOUT) -> tuple[dict[str, dict], dict[str, str]]:
    """Reassembled reveal bodies of the given signers (part counts from their commits).

    Returns ({signer: body}, {signer: reason}) for signers whose reveal is complete and well formed
    vs. missing/incomplete/malformed.
    """
    kind = kind.value if isinstance(kind, RecordKind) else kind
    wanted = {p: n for p, n in parts_by_signer.items() if isinstance(n, int) and 1 <= n <= MAX_PARTS}
    got: dict[str, list[OpenedRecord]] = {p: [] for p in wanted}
    for part in range(max(wanted.values(), default=0)):
        for signer, rec in fetch_records(dht, policy, epoch, kind, part=part, timeout=timeout).items():
            if signer in got:
                got[signer].append(rec)
    bodies: dict[str, dict] = {}
    problems: dict[str, str] = {}
    for signer, n in wanted.items():
        if not got[signer]:
            problems[signer] = "no reveal"
            continue
        try:
            bodies[signer] = join_reveal(kind, epoch, got[signer], n)
        except ConsensusRecordError as e:
            problems[signer] = f"invalid: {e}"[:200]
    return bodies, problems


def store_sealed(dht, key: str, subkey: str, value: bytes, *, ttl: float, timeout: float = DHT_TIMEOUT,
                 **log_fields) -> bool:
    """Store already-sealed bytes (also how an attacker would replay them: admission decides)."""
    try:
        fut = dht.store(key, value, get_dht_time() + ttl, subkey=subkey, return_future=True)
        ok = fut.result(timeout=timeout)
    except Exception as e:  # timeout, DHT shut down
        event(log, "consensus_record_store_failed", logging.WARNING, error=f"{type(e).__name__}: {e}"[:200],
              **log_fields)
        return False
    ok = bool(ok) if not isinstance(ok, dict) else all(ok.values())
    event(log, "consensus_record_stored", logging.DEBUG, ok=ok, size=len(value), **log_fields)
    return ok


def fetch_records(dht, policy: ConsensusRecordPolicy, epoch: int, kind: str | RecordKind, *,
                  part: int | None = None, timeout: float = DHT_TIMEOUT) -> dict[str, OpenedRecord]:
    """Records of (epoch, kind[, part]) from the DHT, each re-checked; invalid ones are dropped and logged."""
    kind = kind.value if isinstance(kind, RecordKind) else kind
    try:
        key = consensus_key(policy.subnet_id, epoch, kind, part)
        found = dht.get(key, latest=True, return_future=True).result(
            timeout=timeout)
    except Exception as e:
        raise DHTUnavailableError(f"fetching {kind} records of epoch {epoch} failed: {type(e).__name__}: {e}") from None
    if found is None or not isinstance(found.value, dict):
        return {}
    out: dict[str, OpenedRecord] = {}
    for subkey, item in found.value.items():
        value = getattr(item, "value", None)
        try:
            if not isinstance(value, bytes):
                raise ConsensusRecordError("value is not bytes")
            out[subkey] = policy.check(value, subkey, expected=(epoch, kind, part))
        except ConsensusRecordError as e:
            event(log, "consensus_record_dropped", logging.INFO, kind=kind, epoch=epoch,
                  subkey=str(subkey)[:64], reason=str(e)[:200])
        except ChainError as e:
            event(log, "consensus_record_unverifiable", logging.WARNING, kind=kind, reason=str(e)[:200])
    return out


def make_record_validator(chain_factory: Callable[[], Chain], subnet_id: int, **policy_kw) -> ConsensusRecordValidator:
    """The validator a node passes to `start_dht(record_validators=[...])`.

    `chain_factory` must build a NEW chain client (e.g. `lambda: DevnetChain(url)`): it is
    called inside hivemind's DHT process, which is forked from the node, and a client created
    before the fork would share its HTTP/websocket connection between two processes.
    """
    return ConsensusRecordValidator(ConsensusRecordPolicy(subnet_id, ChainRegistry(chain_factory, subnet_id),
                                                          **policy_kw))


def fetch_probe(dht, policy: ConsensusRecordPolicy, expected: ProbeSpec) -> tuple[ProbeSpec, str] | None:
    """A posted probe of `expected.epoch` equal to the seed-derived one: (spec, poster peer id), or None.

    Posted probes that differ from `expected` (other shape, other blocks) are ignored and logged.
    """
    from consensus.probe import check_probe

    records = fetch_records(dht, policy, expected.epoch, RecordKind.PROBE)
    for peer in sorted(records):
        payload = {k: v for k, v in records[peer].payload.items() if k != "block"}
        try:
            spec = ProbeSpec.from_payload(payload)
            check_probe(spec, expected)
        except ValueError as e:
            event(log, "probe_rejected", logging.WARNING, epoch=expected.epoch, poster=peer, reason=str(e)[:200])
            continue
        return spec, peer
    return None
