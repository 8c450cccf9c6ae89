"""Announcements that can't be replayed, reordered or pushed out by junk (real DHT peers on 127.0.0.1).

An honest storer and an honest reader run `AnnouncementValidator`; the attacker runs none and
stores whatever it likes (its stores reach the honest peer: 3 peers < hivemind's replicas).
"""

from __future__ import annotations

import json
import time
from functools import partial

import msgpack
import pytest
from hivemind.dht.routing import DHTID
from hivemind.dht.storage import DictionaryDHTValue
from hivemind.dht.validation import DHTRecord
from hivemind.utils import MSGPackSerializer, get_dht_time

from chain.types import NodeClass, SubnetNode
from hoster.announce import Announcer
from keys import NodeKey
from subnet.swarm.announcements import (
    MAX_ANNOUNCE_BYTES,
    MAX_ANNOUNCE_TTL,
    Announcement,
    AnnouncementValidator,
    read_announcements,
    servers_key,
)
from subnet.swarm.dht import start_dht, visible_maddrs
from subnet.swarm.records import RecordError, open_record, seal

MODEL = "replay-test"


def payload_of(key: NodeKey, **kw) -> dict:
    fields = dict(peer_id=key.peer_id, model=MODEL, start=0, end=4, num_blocks=8, hidden_size=64, throughput=5.0,
                  cache_tokens_free=100, cache_tokens_total=100, version="t")
    fields.update(kw)
    return Announcement(**fields).to_payload()


def record(key_str: str, subkey: str, value: bytes, expiration: float) -> DHTRecord:
    return DHTRecord(DHTID.generate(source=key_str).to_bytes(), MSGPackSerializer.dumps(subkey),
                     MSGPackSerializer.dumps(value), expiration)


def sequenced(key: NodeKey, ttl: float = 60.0, issued: float | None = None, **kw) -> tuple[bytes, float]:
    issued = time.time() if issued is None else issued
    until = issued + ttl
    return seal(key, "announce", dict(payload_of(key, **kw), seq=int(issued * 1e9), valid_until=until)), until


# ---- pure checks ---------------------------------------------------------------------------------------------


def test_open_record_rejects_non_canonical_encodings():
    key = NodeKey.generate()
    data = seal(key, "announce", payload_of(key))
    assert open_record(data).peer_id == key.peer_id
    obj = json.loads(data)
    reordered = json.dumps(dict(reversed(list(obj.items()))), separators=(",", ":")).encode()
    spaced = json.dumps(obj, sort_keys=True).encode()
    for other in (reordered, spaced, data + b" "):
        assert other != data
        with pytest.raises(RecordError, match="canonical"):
            open_record(other)


def test_validator_caps_expiry_by_the_signed_validity():
    key = NodeKey.generate()
    v = AnnouncementValidator(model_uids=[MODEL])
    k = servers_key(MODEL)
    value, until = sequenced(key)
    assert v.validate(record(k, key.peer_id, value, until))
    assert not v.validate(record(k, key.peer_id, value, until + 5))  # replayed with a later expiry
    assert not v.validate(record(k, key.peer_id, value, get_dht_time() + 10_000))  # far future
    old, _ = sequenced(key, issued=time.time() - 120)
    assert not v.validate(record(k, key.peer_id, old, get_dht_time() + 60))  # an old record re-stored fresh
    future, f_until = sequenced(key, issued=time.time() + 3600)
    assert not v.validate(record(k, key.peer_id, future, f_until))  # issued in the future
    long, l_until = sequenced(key, ttl=MAX_ANNOUNCE_TTL * 10)
    assert not v.validate(record(k, key.peer_id, long, min(l_until, get_dht_time() + 100)))  # signs too long a life


def test_validator_rejects_junk_under_guarded_servers_keys_only():
    key = NodeKey.generate()
    v = AnnouncementValidator(model_uids=[MODEL])
    k, exp = servers_key(MODEL), get_dht_time() + 30
    value, until = sequenced(key)
    assert not v.validate(record(k, "junk", b"hello", exp))
    assert not v.validate(DHTRecord(DHTID.generate(source=k).to_bytes(), MSGPackSerializer.dumps("x"),
                                    msgpack.packb({"a": 1}), exp))
    assert not v.validate(record(k, "big", b"x" * (MAX_ANNOUNCE_BYTES + 10), exp))
    assert not v.validate(record(k, key.peer_id, seal(key, "probe", {"x": 1}), exp))  # another kind
    unsequenced = seal(key, "announce", payload_of(key))
    assert not v.validate(record(k, key.peer_id, unsequenced, exp))
    other_model, om_until = sequenced(key, model="another-model")
    assert not v.validate(record(k, key.peer_id, other_model, om_until))  # under the wrong servers key
    # other keys are not ours to judge, except announcements, which are checked wherever they are
    assert v.validate(record("unrelated", "junk", b"hello", exp))
    assert v.validate(record("unrelated", key.peer_id, unsequenced, exp))
    assert not v.validate(record("unrelated", key.peer_id, value, until + 100))


class Registry:
    def __init__(self, nodes: dict[str, NodeClass]):
        self.nodes_ = nodes

    def node(self, peer_id):
        cls = self.nodes_.get(peer_id)
        return None if cls is None else SubnetNode(1, 1, "c", "h", peer_id, cls, 0, 1.0)


def test_validator_with_registry_admits_registered_serving_nodes_only():
    member, outsider, registered_only = NodeKey.generate(), NodeKey.generate(), NodeKey.generate()
    reg = Registry({member.peer_id: NodeClass.IDLE, registered_only.peer_id: NodeClass.REGISTERED})
    v = AnnouncementValidator(model_uids=[MODEL], registry=reg)
    k = servers_key(MODEL)
    for key, ok in ((member, True), (outsider, False), (registered_only, NodeClass.REGISTERED >= NodeClass.IDLE)):
        value, until = sequenced(key)
        assert v.validate(record(k, key.peer_id, value, until)) is ok, key.peer_id


# ---- real peers ----------------------------------------------------------------------------------------------


async def _stored(_dht, node, key_id: DHTID, subkey: str):
    found = node.protocol.storage.get(key_id)
    if found is None or not isinstance(found.value, DictionaryDHTValue):
        return None
    item = found.value.get(subkey)
    return None if item is None else (MSGPackSerializer.loads(item.value), item.expiration_time)


def stored(dht, key: str, subkey: str):
    return dht.run_coroutine(partial(_stored, key_id=DHTID.generate(source=key), subkey=subkey))


async def _subkeys(_dht, node, key_id: DHTID) -> set[str]:
    found = node.protocol.storage.get(key_id)
    return set() if found is None else {str(s) for s, _ in found.value.items()}


def subkeys(dht, key: str) -> set[str]:
    return dht.run_coroutine(partial(_subkeys, key_id=DHTID.generate(source=key)))


@pytest.fixture
def peers():
    made = []

    def make(initial=(), **kw):
        d = start_dht(NodeKey.generate(), list(initial), check_if_identity_free=False, **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        d.shutdown()


def test_replayed_reordered_far_future_and_junk_records_are_rejected_by_honest_peers(peers):
    honest = peers(record_validators=[AnnouncementValidator(model_uids=[MODEL])])
    maddrs = visible_maddrs(honest)
    attacker = peers(maddrs)  # stores anything
    reader = peers(maddrs, record_validators=[AnnouncementValidator(model_uids=[MODEL])])
    hoster_key = NodeKey.generate()
    state = {"start": 0}
    ann = Announcer(reader, hoster_key, MODEL, lambda: payload_of(hoster_key, start=state["start"], end=4),
                    ttl=30.0, period=1000)
    key = servers_key(MODEL)
    assert ann.publish(state="joining")  # an old record the attacker will replay
    old_value, old_exp = stored(honest, key, hoster_key.peer_id)
    state["start"] = 1
    assert ann.publish()  # the current record
    current, current_exp = stored(honest, key, hoster_key.peer_id)
    assert current != old_value and current_exp > old_exp

    now = get_dht_time()
    obj = json.loads(current)
    reordered = json.dumps(dict(reversed(list(obj.items()))), separators=(",", ":")).encode()
    attacks = [
        (hoster_key.peer_id, old_value, now + MAX_ANNOUNCE_TTL - 5),  # replay of the old record, fresh expiry
        (hoster_key.peer_id, reordered, now + MAX_ANNOUNCE_TTL - 5),  # same signature, keys reordered
        (hoster_key.peer_id, current, now + MAX_ANNOUNCE_TTL - 5),  # current record, later expiry
        (hoster_key.peer_id, current, now + 10 * 365 * 86400),  # far future
        ("junk", b"junk" * 10, now + 10 * 365 * 86400),  # junk with a 10-year expiry
        # (oversize values are checked without the network: hivemind's pipe to its DHT process
        # desynchronises on messages over 16 KiB, see subnet/swarm/epoch_records.py)
    ]
    for subkey, value, exp in attacks:
        attacker.store(key, value, exp, subkey=subkey)
    # the honest peer still holds exactly the hoster's current record, and nothing else
    assert stored(honest, key, hoster_key.peer_id) == (current, current_exp)
    assert subkeys(honest, key) == {hoster_key.peer_id}
    # the reader sees the current record (the attacker's own copy is dropped on read)
    anns = read_announcements(reader, MODEL, include_offline=True)
    assert [(a.peer_id, a.start, a.state) for a in anns] == [(hoster_key.peer_id, 1, "online")]
    assert anns[0].seq == json.loads(current)["payload"]["seq"]
