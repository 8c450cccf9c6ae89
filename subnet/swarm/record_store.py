"""Writing and reading consensus records: sealed, stored under our subkey, re-checked on read.

hivemind calls have no timeout of their own, so every call here is bounded by DHT_TIMEOUT
and a dead DHT surfaces as `DHTUnavailableError` (retry later), never as "no records".
"""

from __future__ import annotations

import logging

from hivemind.utils import get_dht_time

from chain.types import ChainError
from consensus.phases import RecordKind
from consensus.probe import ProbeSpec, check_probe
from keys.node_key import NodeKey
from subnet.logs import event
from subnet.swarm.chain_view import EpochPosition
from subnet.swarm.epoch_records import (
    CHUNKED_KINDS,
    MAX_PARTS,
    ConsensusRecordError,
    consensus_key,
    join_reveal,
    split_reveal,
)
from subnet.swarm.record_admission import ConsensusRecordPolicy
from subnet.swarm.records import OpenedRecord, seal

log = logging.getLogger(__name__)


def record_ttl(view: EpochPosition, epochs: float = 3.0) -> float:
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
                  parts_by_signer: dict[str, int], *,
                  timeout: float = DHT_TIMEOUT) -> tuple[dict[str, dict], dict[str, str]]:
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


def fetch_probe(dht, policy: ConsensusRecordPolicy, expected: ProbeSpec) -> tuple[ProbeSpec, str] | None:
    """A posted probe of `expected.epoch` equal to the seed-derived one: (spec, poster peer id), or None.

    Posted probes that differ from `expected` (other shape, other blocks) are ignored and logged.
    """
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
