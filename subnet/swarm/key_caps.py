"""The closed list of DHT keys the project uses, each with a size, count-per-signer and expiry cap.

hivemind stores any value under any key for any expiration, so a peer that only checks the
keys it recognises keeps whatever junk an attacker writes under every other key (its memory
grows without bound). `KeyCapValidator` is the last line: a record is admitted only under a
key family the project uses, within that family's caps; the family's own validator
(`AnnouncementValidator`, `ConsensusRecordValidator`) then checks the content.

Families (docs/PROTOCOL.md "DHT keys and their caps" lists them with numbers):

- servers: `mesh.v1/{model_uid}/servers`; the value must be a sealed `announce` record whose
  payload's model gives exactly this key (so a key is recognised from its value alone, for
  any model); at most one record per signer per key (subkey = signer) and at most
  `MAX_SERVER_KEYS_PER_SIGNER` distinct servers keys per signer held at once;
- consensus: `mesh.v1/consensus/{subnet}/{epoch}/{kind}[/{part}]` of our subnet and the
  epochs near the chain's (`ConsensusRecordPolicy.known_key`).

A new key family must be added here (or passed as `extra_families`), or honest peers refuse it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import msgpack
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from hivemind.utils import get_dht_time

from subnet.swarm.announcements import MAX_ANNOUNCE_BYTES, MAX_ANNOUNCE_TTL, servers_key
from subnet.swarm.epoch_records import DEFAULT_SIZE_LIMITS
from subnet.swarm.record_admission import ConsensusRecordPolicy
from subnet.swarm.records import RecordError, open_record

log = logging.getLogger(__name__)

MAX_SERVER_KEYS_PER_SIGNER = 4  # models one hoster may announce at once
MAX_CONSENSUS_BYTES = max(DEFAULT_SIZE_LIMITS.values())
MAX_CONSENSUS_TTL = 3600.0
MAX_TRACKED_SIGNERS = 4096  # bound on the per-signer bookkeeping itself


class KeyCapValidator(RecordValidatorBase):
    """Reject every DHT record that is not under one of the project's key families, within its caps."""

    def __init__(self, policy: ConsensusRecordPolicy | None = None, *,
                 extra_families: Iterable[Callable[[DHTRecord], bool]] = ()):
        self.policy = policy
        self.extra_families = list(extra_families)
        self.rejected = 0
        self._server_keys: dict[str, dict[bytes, float]] = {}  # signer -> {servers key id: expiration}

    def validate(self, record: DHTRecord) -> bool:
        try:
            if self.policy is not None and self.policy.known_key(record.key) is not None:
                if len(record.value) > MAX_CONSENSUS_BYTES + 64:
                    return self._reject("consensus record of %d bytes", len(record.value))
                if record.expiration_time > get_dht_time() + MAX_CONSENSUS_TTL:
                    return self._reject("consensus record expiring too late")
                return True  # the content is ConsensusRecordValidator's to check
            if self._server_record(record):
                return True
            if any(f(record) for f in self.extra_families):
                return True
        except Exception as e:  # a malformed record never takes the DHT down
            return self._reject("%s: %s", type(e).__name__, str(e)[:200])
        return self._reject("not under a key the project uses")

    def _server_record(self, record: DHTRecord) -> bool:
        """A sealed announcement stored under the servers key of its own model, within the caps."""
        if len(record.value) > MAX_ANNOUNCE_BYTES + 64 or record.expiration_time > get_dht_time() + MAX_ANNOUNCE_TTL:
            return False
        try:
            value = msgpack.unpackb(record.value, raw=False, max_bin_len=MAX_ANNOUNCE_BYTES, max_str_len=256,
                                    max_array_len=16, max_map_len=16, max_ext_len=0)
            if not isinstance(value, bytes) or b'"kind":"announce"' not in value[:64]:
                return False
            rec = open_record(value, "announce", max_bytes=MAX_ANNOUNCE_BYTES)
        except (ValueError, RecordError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
            return False
        model = rec.payload.get("model")
        if not isinstance(model, str) or len(model) > 200:
            return False
        if DHTID.generate(source=servers_key(model)).to_bytes() != record.key:
            return False
        return self._count_server_key(rec.peer_id, record.key, record.expiration_time)

    def _count_server_key(self, signer: str, key: bytes, expiration: float) -> bool:
        now = get_dht_time()
        keys = {k: e for k, e in self._server_keys.get(signer, {}).items() if e > now}
        if key not in keys and len(keys) >= MAX_SERVER_KEYS_PER_SIGNER:
            self._server_keys[signer] = keys
            return False
        keys[key] = max(expiration, keys.get(key, 0.0))
        self._server_keys[signer] = keys
        if len(self._server_keys) > MAX_TRACKED_SIGNERS:  # drop signers whose keys all expired
            self._server_keys = {s: k for s, k in self._server_keys.items()
                                 if any(e > now for e in k.values())}
        return True

    def _reject(self, reason: str, *args) -> bool:
        self.rejected += 1
        log.debug("rejecting DHT record: " + reason, *args)
        return False

    @property
    def priority(self) -> int:
        return 20  # runs first: the cheapest check, and it bounds what the others parse

    def merge_with(self, other: RecordValidatorBase) -> bool:
        return False
