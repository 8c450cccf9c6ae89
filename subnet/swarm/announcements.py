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
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import hivemind
import msgpack
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from hivemind.utils import get_dht_time

from consensus.phases import RecordKind
from consensus.precision import QUANT_MODES
from subnet.swarm.epoch_records import REQUIRED_CLASS
from subnet.swarm.records import RecordError, open_record

log = logging.getLogger(__name__)

PROTOCOL_VERSION = "mesh.v1"
MAX_ANNOUNCE_BYTES = 16 * 1024
EXPIRY_SLACK = 1e-3  # seconds: float noise between the signed valid_until and the DHT expiration
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
    # Replay protection (0 = an older writer that sets neither): `seq` is the hoster's issue time in
    # ns, strictly increasing per hoster; `valid_until` is the DHT expiration it signed for this
    # record. Storers reject a DHT expiration beyond `valid_until` (see AnnouncementValidator).
    seq: int = 0
    valid_until: float = 0.0
    # Reachability: True when the hoster is behind NAT and reached through a circuit relay
    # (--use-auto-relay); clients prefer direct routes (subnet.client.routing RELAY_PENALTY).
    relayed: bool = False
    quant: str = "none"  # weight-only quantization of the blocks (consensus.precision; older writers: none)
    adapters: tuple[str, ...] = ()  # LoRA adapters a session may pick on this hoster (older writers: none)
    # how its one-session decode steps run (hoster.compile_auto): informational, never trusted for routing
    decode_path: str = "eager"
    decode_threads: int = 0  # intra-op threads of its small steps (hoster.decode_threads; 0: not said), informational
    expiration: float = math.inf

    def to_payload(self) -> dict[str, Any]:
        payload = asdict(self)
        del payload["expiration"]
        payload["adapters"] = list(self.adapters)
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
        valid_until = payload.get("valid_until", 0.0)
        if isinstance(valid_until, bool) or not isinstance(valid_until, (int, float)) or not (
            0 <= valid_until < 1e11 and math.isfinite(valid_until)
        ):
            raise ValueError("announcement field 'valid_until' is not a finite non-negative number")
        seq = payload.get("seq", 0)
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < 1 << 63:
            raise ValueError("announcement field 'seq' is not a non-negative 63-bit integer")
        relayed = payload.get("relayed", False)
        if not isinstance(relayed, bool):
            raise ValueError("announcement field 'relayed' is not a boolean")
        ann = cls(
            seq=seq, valid_until=float(valid_until), relayed=relayed,
            peer_id=text("peer_id", 100), model=text("model"), start=integer("start"), end=integer("end"),
            throughput=float(throughput), cache_tokens_free=integer("cache_tokens_free"),
            cache_tokens_total=integer("cache_tokens_total"), version=text("version", 50), state=text("state", 20),
            num_blocks=integer("num_blocks", 1), hidden_size=integer("hidden_size", 1), dtype=text("dtype", 20),
            quant=text("quant", 10) if "quant" in payload else "none", expiration=float(expiration),
            adapters=_adapters(payload.get("adapters", [])),
            decode_path=text("decode_path", 20) if "decode_path" in payload else "eager",
            decode_threads=integer("decode_threads", 0, 4096) if "decode_threads" in payload else 0,
        )
        if not ann.start < ann.end <= ann.num_blocks:
            raise ValueError(f"announced blocks [{ann.start}, {ann.end}) invalid for {ann.num_blocks} blocks")
        if ann.quant not in QUANT_MODES:
            raise ValueError(f"unknown announced quantization {ann.quant!r}")
        if ann.decode_path not in DECODE_PATHS:  # informational: a newer writer's path must not hide the hoster
            ann = replace(ann, decode_path="other")
        if ann.state not in STATES:
            raise ValueError(f"unknown announcement state {ann.state!r}")
        return ann


DECODE_PATHS = ("eager", "compiling", "compiled", "other")  # "other": a path this version does not know
MAX_ADAPTERS = 32  # per announcement; each name a model-uid-like string (subnet.model.adapters)


def _adapters(value: Any) -> tuple[str, ...]:
    """The announced adapter names: a short list of short, distinct uid-like strings."""
    if not isinstance(value, (list, tuple)) or len(value) > MAX_ADAPTERS:
        raise ValueError(f"announcement field 'adapters' is not a list of at most {MAX_ADAPTERS} names")
    ok = all(isinstance(v, str) and 0 < len(v) <= 128 and v.replace("-", "").replace(".", "").replace("_", "")
             .isalnum() and v == v.lower() and v.isascii() for v in value)
    if not ok or len(set(value)) != len(value):
        raise ValueError("announcement field 'adapters' holds a malformed or repeated name")
    return tuple(value)


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
            if ann.seq and expiration > ann.valid_until + EXPIRY_SLACK:
                raise RecordError("stored with an expiration beyond the one its hoster signed (replay)")
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
MAX_CLOCK_SKEW = 30.0  # seconds an announcement's issue time may be ahead of the storer's clock
SERVING_CLASS = REQUIRED_CLASS[RecordKind.HOSTER_COMMIT.value]  # the consensus records' admission rule


class AnnouncementValidator(RecordValidatorBase):
    """hivemind record validator for announcements (install on every DHT peer).

    For every value that is a sealed `announce` record (under any key): it must verify and be in
    canonical encoding (`open_record`), fit MAX_ANNOUNCE_BYTES, its subkey must be the signer's
    peer id, its payload a valid `Announcement` of that peer, and its DHT expiration at most
    `max_ttl` ahead. A sequenced record (`seq` > 0, written by every hoster of this version) must
    also have been issued at most MAX_CLOCK_SKEW in the future, sign a `valid_until` within
    `max_ttl` of its issue time, and be stored with an expiration no later than that
    `valid_until`: so nobody can re-store a hoster's old record with a fresh expiration, and
    since an honest hoster signs increasing `valid_until`s and hivemind keeps the latest
    expiration per subkey, a newer record always replaces an older one, never the reverse.

    `model_uids`: the models whose servers keys this peer guards; any value under one of those
    keys must be a sequenced announcement of that model (junk, other records, oversize values
    are rejected). `registry` (a `ChainRegistry`, built lazily in hivemind's DHT process): only
    nodes registered on chain with class >= SERVING_CLASS may announce. A node seen registered
    in the last `max_ttl` seconds stays acceptable (its stored records expire within that time),
    and a chain that cannot be read fails open (logged): hivemind drops a peer's whole
    dictionary when one entry is rejected on read, so a registry hiccup must not blank the
    hoster list.
    """

    def __init__(self, max_ttl: float = MAX_ANNOUNCE_TTL, *, model_uids: Iterable[str] = (),
                 registry: Any = None):
        self.max_ttl = max_ttl
        self.rejected = 0
        self.registry = registry
        self._guarded = {DHTID.generate(source=servers_key(m)).to_bytes(): m for m in model_uids}
        self._seen_registered: dict[str, float] = {}

    def validate(self, record: DHTRecord) -> bool:
        model = self._guarded.get(record.key)
        if len(record.value) > MAX_ANNOUNCE_BYTES + 64:
            return self._reject("value of %d bytes", len(record.value)) if model else True
        try:
            value = msgpack.unpackb(record.value, raw=False, max_ext_len=0, max_array_len=16, max_map_len=16)
        except Exception:
            return self._reject("value is not msgpack") if model else True
        is_announce = isinstance(value, bytes) and b'"kind":"announce"' in value[:64]
        if not is_announce:
            return self._reject("not an announcement under a servers key") if model else True
        try:
            self.check(record, value, model)
        except Exception as e:
            return self._reject("%s", e)
        return True

    def check(self, record: DHTRecord, value: bytes, model: str | None) -> Announcement:
        subkey = msgpack.unpackb(record.subkey, raw=False, max_str_len=256, max_bin_len=256, max_ext_len=0)
        rec = open_record(value, "announce", max_bytes=MAX_ANNOUNCE_BYTES)
        if subkey != rec.peer_id:
            raise RecordError("subkey is not the signer's peer id")
        ann = Announcement.from_payload(rec.payload, record.expiration_time)
        if ann.peer_id != rec.peer_id:
            raise RecordError("payload peer_id is not the signer")
        now = get_dht_time()
        if record.expiration_time > now + self.max_ttl:
            raise RecordError("expiration too far in the future")
        if ann.seq:
            issued = ann.seq / 1e9
            if issued > now + MAX_CLOCK_SKEW:
                raise RecordError("issued in the future")
            if ann.valid_until > issued + self.max_ttl + MAX_CLOCK_SKEW:
                raise RecordError("signed validity beyond the maximum TTL")
            if record.expiration_time > ann.valid_until + EXPIRY_SLACK:
                raise RecordError("expiration beyond the signed validity (replay)")
        elif model is not None:
            raise RecordError("announcement without a sequence number")
        if model is not None and ann.model != model:
            raise RecordError(f"announcement for {ann.model!r} under the servers key of {model!r}")
        if self.registry is not None and not self._registered(rec.peer_id):
            raise RecordError(f"{rec.peer_id} is not a registered node of class >= {SERVING_CLASS.name}")
        return ann

    def _registered(self, peer_id: str) -> bool:
        try:
            node = self.registry.node(peer_id)
        except Exception as e:  # chain outage: fail open (see the class docstring)
            log.warning("announcement registry unreadable, accepting %s: %s", peer_id, e)
            return True
        now = time.monotonic()
        if node is not None and node.node_class >= SERVING_CLASS:
            self._seen_registered[peer_id] = now
            return True
        seen = self._seen_registered.get(peer_id)
        return seen is not None and now - seen < self.max_ttl

    def _reject(self, reason: str, *args) -> bool:
        self.rejected += 1
        log.debug("rejecting announcement record: " + reason, *args)
        return False

    @property
    def priority(self) -> int:
        return 5

    def merge_with(self, other: RecordValidatorBase) -> bool:
        return False
