"""Admission of consensus records into the DHT.

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

import json
import logging
from collections.abc import Callable

import msgpack
from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from hivemind.utils import get_dht_time

from chain.base import Chain
from chain.types import ChainError
from consensus.phases import PROBE_ELECTED_ONLY_END, RecordKind, block_window, ceil_fraction
from consensus.probe import probe_seed
from subnet.logs import event
from subnet.swarm.chain_view import ChainRegistry, ConsensusRegistry, EpochPosition
from subnet.swarm.epoch_records import (
    CHUNKED_KINDS,
    DEFAULT_SIZE_LIMITS,
    KINDS,
    MAX_PARTS,
    REQUIRED_CLASS,
    ConsensusRecordError,
    check_payload_schema,
    consensus_key,
    key_id_bytes,
)
from subnet.swarm.records import OpenedRecord, RecordError, open_record

log = logging.getLogger(__name__)


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
        # A read names its (epoch, kind): it may look one epoch further back than a store may write, so a
        # validator whose scoring of e ran past the boundary (a loaded machine) still reads e-1's commits
        # instead of scoring with none of them (and then refusing the proposer's set).
        oldest = view.epoch - (2 if expected is not None else 1)
        if not (oldest <= epoch <= view.epoch or (epoch == view.epoch + 1 and near_end)):
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

    def _check_probe(self, opened: OpenedRecord, view: EpochPosition) -> None:
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
    try:
        obj = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("not json") from None
    return obj.get("kind") if isinstance(obj, dict) else None


def make_record_validator(chain_factory: Callable[[], Chain], subnet_id: int, **policy_kw) -> ConsensusRecordValidator:
    """The validator a node passes to `start_dht(record_validators=[...])`.

    `chain_factory` must build a NEW chain client (e.g. `lambda: DevnetChain(url)`): it is
    called inside hivemind's DHT process, which is forked from the node, and a client created
    before the fork would share its HTTP/websocket connection between two processes.
    """
    return ConsensusRecordValidator(ConsensusRecordPolicy(subnet_id, ChainRegistry(chain_factory, subnet_id),
                                                          **policy_kw))
