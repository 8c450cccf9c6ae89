"""Hoster announcements in the DHT: the record format and the verifying reader.

Key `mesh.v1/{model_uid}/servers`, subkey = the hoster's peer id, value = a sealed
`announce` record (subnet.swarm.records) whose payload describes the served span. Readers
(clients, hosters choosing blocks, the API) accept a record only if its signature
verifies, its signer's peer id equals the subkey and the payload's peer id, it is not
expired and not offline, and its fields are well-formed. Runtime layer: no imports of
hoster/ or the client, so every role can use it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import hivemind
import msgpack
from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from hivemind.utils import get_dht_time

from subnet.swarm.records import RecordError, open_record

log = logging.getLogger(__name__)

PROTOCOL_VERSION = "mesh.v1"
MAX_ANNOUNCE_BYTES = 16 * 1024
STATES = ("online", "joining", "offline")


def servers_key(model_uid: str) -> str:
    return f"{PROTOCOL_VERSION}/{model_uid}/servers"


MIN_THROUGHPUT = 1e-3  # tokens/s floor when a route costs a hoster by its throughput


@dataclass(frozen=True)
class Announcement:
    """What a hoster announces about itself: the one schema its writer and every reader use.

    `to_payload()` is what the hoster signs and stores (and answers to `rpc_info`);
    `from_payload()` is the only parser. Fields it does not know are ignored, so a newer
    hoster can add fields without breaking older readers. `expiration` comes from the DHT
    record, not from the payload.
    """

    peer_id: str
    model: str
    start: int
    end: int
    num_blocks: int
    hidden_size: int
    dtype: str = "float32"
    throughput: float = 0.0  # tokens/s through the whole span, measured at start-up
    cache_tokens_free: int = 0
    cache_tokens_total: int = 0
    version: str = ""
    state: str = "online"
    expiration: float = math.inf

    def to_payload(self) -> dict[str, Any]:
        payload = asdict(self)
        del payload["expiration"]
        return payload

    def block_time(self) -> float:
        """Seconds per token per block, from the announced span throughput (tokens/s)."""
        return 1.0 / (max(self.throughput, MIN_THROUGHPUT) * (self.end - self.start))

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], expiration: float = math.inf) -> Announcement:
        """Validate field types and ranges; raise ValueError on anything malformed."""
        if not isinstance(payload, Mapping):
            raise ValueError("announcement payload is not an object")

        def integer(name: str, lo: int = 0, hi: int = 1 << 40) -> int:
            v = payload.get(name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"announcement field {name!r} is not an integer in [{lo}, {hi}]")
            return v

        def text(name: str, limit: int = 200) -> str:
            v = payload.get(name)
            if not isinstance(v, str) or len(v) > limit:
                raise ValueError(f"announcement field {name!r} is not a short string")
            return v

        throughput = payload.get("throughput")
        if isinstance(throughput, bool) or not isinstance(throughput, (int, float)) or not (
            0 <= throughput < 1e12 and math.isfinite(throughput)
        ):
            raise ValueError("announcement field 'throughput' is not a finite non-negative number")
        ann = cls(
            peer_id=text("peer_id", 100), model=text("model"), start=integer("start"), end=integer("end"),
            throughput=float(throughput), cache_tokens_free=integer("cache_tokens_free"),
            cache_tokens_total=integer("cache_tokens_total"), version=text("version", 50), state=text("state", 20),
            num_blocks=integer("num_blocks", 1), hidden_size=integer("hidden_size", 1), dtype=text("dtype", 20),
            expiration=float(expiration),
        )
        if not ann.start < ann.end <= ann.num_blocks:
            raise ValueError(f"announced blocks [{ann.start}, {ann.end}) invalid for {ann.num_blocks} blocks")
        if ann.state not in STATES:
            raise ValueError(f"unknown announcement state {ann.state!r}")
        return ann


def parse_entries(entries: dict, model_uid: str, now: float | None = None, *,
                  include_offline: bool = False) -> list[Announcement]:
    """Verify raw DHT subkey entries {subkey: ValueWithExpiration(bytes)} (pure; tests use it too)."""
    now = get_dht_time() if now is None else now
    out: list[Announcement] = []
    for subkey, item in entries.items():
        value, expiration = getattr(item, "value", None), getattr(item, "expiration_time", None)
        if not isinstance(value, (bytes, bytearray)) or not isinstance(expiration, (int, float)) or expiration < now:
            continue
        try:
            rec = open_record(bytes(value), "announce", max_bytes=MAX_ANNOUNCE_BYTES)
            if str(subkey) != rec.peer_id:
                raise RecordError(f"subkey {str(subkey)[:60]!r} is not the signer {rec.peer_id}")
            ann = Announcement.from_payload(rec.payload, expiration)
            if ann.peer_id != rec.peer_id:
                raise RecordError("payload peer_id is not the signer")
            if ann.model != model_uid:
                raise RecordError(f"announcement for {ann.model!r} under {model_uid!r}")
        except (RecordError, ValueError) as e:
            log.debug("dropping announcement under %s: %s", str(subkey)[:60], e)
            continue
        if ann.state == "offline" and not include_offline:
            continue
        out.append(ann)
    out.sort(key=lambda a: (a.start, a.end, a.peer_id))
    return out


def read_announcements(dht: hivemind.DHT, model_uid: str, *, include_offline: bool = False) -> list[Announcement]:
    """All valid announcements of `model_uid` (blocking DHT lookup); online and joining by default."""
    found = dht.get(servers_key(model_uid), latest=True)
    if found is None or not isinstance(found.value, dict):
        return []
    return parse_entries(found.value, model_uid, include_offline=include_offline)


MAX_ANNOUNCE_TTL = 600.0


class AnnouncementValidator(RecordValidatorBase):
    """hivemind record validator: only a peer itself may write its announcement.

    Applies to values that are sealed `announce` records (other values pass through, so it
    composes with other validators): the value must verify, fit MAX_ANNOUNCE_BYTES, the subkey
    must equal the signer's peer id, and the expiration must be at most MAX_ANNOUNCE_TTL ahead.
    Without it a forger could store a record with a later expiration under a hoster's subkey,
    and hivemind (which keeps the latest expiration per subkey) would hide the real one.
    Install on every DHT peer: `start_dht(..., record_validators=[AnnouncementValidator(), ...])`.
    """

    def __init__(self, max_ttl: float = MAX_ANNOUNCE_TTL):
        self.max_ttl = max_ttl
        self.rejected = 0

    def validate(self, record: DHTRecord) -> bool:
        try:
            value = msgpack.unpackb(record.value, raw=False, max_ext_len=0, max_array_len=16, max_map_len=16)
        except Exception:
            return True  # not a value we wrote: not ours to judge
        if not isinstance(value, bytes) or b'"kind":"announce"' not in value[:64]:
            return True
        try:
            subkey = msgpack.unpackb(record.subkey, raw=False, max_str_len=256, max_bin_len=256, max_ext_len=0)
            rec = open_record(value, "announce", max_bytes=MAX_ANNOUNCE_BYTES)
            if subkey != rec.peer_id:
                raise RecordError("subkey is not the signer's peer id")
            if record.expiration_time > get_dht_time() + self.max_ttl:
                raise RecordError("expiration too far in the future")
        except Exception as e:
            self.rejected += 1
            log.debug("rejecting announcement record: %s", e)
            return False
        return True

    @property
    def priority(self) -> int:
        return 5

    def merge_with(self, other: RecordValidatorBase) -> bool:
        return False
