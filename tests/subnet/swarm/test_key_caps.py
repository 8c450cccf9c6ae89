"""Every DHT key the project uses has a size, count-per-signer and expiry cap; junk under any key
(ours or not) is refused by honest peers, whose memory stays flat under a bounded flood."""

from __future__ import annotations

import os
import time
from functools import partial

import hivemind
import pytest
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord
from hivemind.utils import MSGPackSerializer, get_dht_time

from consensus.phases import RecordKind
from keys import NodeKey
from subnet.swarm.announcements import MAX_ANNOUNCE_BYTES, Announcement, AnnouncementValidator, servers_key
from subnet.swarm.dht import start_dht, visible_maddrs
from subnet.swarm.epoch_records import CHUNKED_KINDS, DEFAULT_SIZE_LIMITS, consensus_key
from subnet.swarm.key_caps import MAX_SERVER_KEYS_PER_SIGNER, KeyCapValidator
from subnet.swarm.record_admission import ConsensusRecordValidator
from subnet.swarm.records import seal
from tests.validator.test_consensus_records import BPE, HOST, SUBNET, at, commit_payload, policy

MODEL = "caps-model"
EPOCH = 5


def all_keys() -> list[str]:
    """Every key family the project uses (one key each), plus keys it never uses."""
    keys = [servers_key(MODEL), servers_key("some-other-model")]
    for kind in RecordKind:
        keys.append(consensus_key(SUBNET, EPOCH, kind, 0 if kind.value in CHUNKED_KINDS else None))
    return keys + ["not/a/project/key", "mesh.v1/anything-else"]


def validators():
    pol = policy(at(EPOCH, 6))
    return [AnnouncementValidator(model_uids=[MODEL]), ConsensusRecordValidator(pol), KeyCapValidator(pol)]


def admitted(vals, key: str, subkey: str, value: bytes, expiration: float | None = None) -> bool:
    rec = DHTRecord(DHTID.generate(source=key).to_bytes(), MSGPackSerializer.dumps(subkey),
                    MSGPackSerializer.dumps(value), get_dht_time() + 60 if expiration is None else expiration)
    return all(v.validate(rec) for v in vals)


def announcement(key: NodeKey, model: str = MODEL, pad: int = 0) -> bytes:
    now = time.time()
    ann = Announcement(peer_id=key.peer_id, model=model, start=0, end=4, num_blocks=8, hidden_size=64,
                       version="x" * pad, seq=int(now * 1e9), valid_until=now + 120)
    return seal(key, "announce", ann.to_payload())


def junk_values(signer: NodeKey) -> list[bytes]:
    return [b"", b"\x00junk", b"{}", b'{"kind":"announce"}', os.urandom(1024), b"x" * (64 << 10),
            seal(signer, "announce", {"anything": 1}), seal(signer, "hoster_commit", {"junk": True}),
            seal(signer, "nonsense", {"k": "v" * 100})]


def test_junk_and_oversize_rejected_under_every_key():
    vals = validators()
    attacker = NodeKey.generate()
    for key in all_keys():
        for value in junk_values(attacker):
            assert not admitted(vals, key, attacker.peer_id, value), (key, value[:40])
    # a real announcement padded past the size cap, under its own key
    assert not admitted(vals, servers_key(MODEL), HOST.peer_id, announcement(HOST, pad=MAX_ANNOUNCE_BYTES))
    # a real consensus record padded past its kind's cap
    big = commit_payload(EPOCH, EPOCH * BPE + 4)
    big["blocks"] = list(range(1024))
    value = seal(HOST, "hoster_commit", big)
    assert len(value) > DEFAULT_SIZE_LIMITS["hoster_commit"]
    assert not admitted(vals, consensus_key(SUBNET, EPOCH, "hoster_commit"), HOST.peer_id, value)


def test_valid_records_pass_and_expiry_and_per_signer_caps_hold():
    vals = validators()
    good = seal(HOST, "hoster_commit", commit_payload(EPOCH, EPOCH * BPE + 4))
    ckey = consensus_key(SUBNET, EPOCH, "hoster_commit")
    assert admitted(vals, ckey, HOST.peer_id, good)
    assert not admitted(vals, ckey, HOST.peer_id, good, get_dht_time() + 10 * 365 * 86400)  # 10-year expiry
    assert not admitted(vals, ckey, NodeKey.generate().peer_id, good)  # another signer's subkey
    signer = NodeKey.generate()
    assert admitted(vals, servers_key(MODEL), signer.peer_id, announcement(signer))
    assert not admitted(vals, servers_key(MODEL), signer.peer_id, announcement(signer), get_dht_time() + 86400)
    assert not admitted(vals, servers_key("elsewhere"), signer.peer_id, announcement(signer))  # key != its model
    # announcements of models this node does not serve are kept (multi-model swarms), a few per signer
    for i in range(MAX_SERVER_KEYS_PER_SIGNER - 1):
        m = f"other-{i}"
        assert admitted(vals, servers_key(m), signer.peer_id, announcement(signer, m))
    assert not admitted(vals, servers_key("one-too-many"), signer.peer_id, announcement(signer, "one-too-many"))
    assert admitted(vals, servers_key(MODEL), signer.peer_id, announcement(signer))  # a held key stays writable


# ---- real peers --------------------------------------------------------------------------------------------


async def _flood(_dht, node, keys: list[str], count: int, size: int, seed: int) -> int:
    """Attacker: store `count` junk values of `size` bytes under each key (built here, not piped in)."""
    import random

    rng = random.Random(seed)
    sent = 0
    for key in keys:
        for i in range(count):
            value = rng.randbytes(size)
            await node.store(key, value, get_dht_time() + 10 * 365 * 86400, subkey=f"junk-{seed}-{i}")
            sent += len(value)
    return sent


async def _held(_dht, node) -> int:
    """Entries this peer holds: each subkey of a dictionary value counts."""
    from hivemind.dht.storage import DictionaryDHTValue

    n = 0
    for store in (node.protocol.storage, node.protocol.cache):
        for _, item in store.items():
            n += len(item.value) if isinstance(item.value, DictionaryDHTValue) else 1
    return n


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_flood_under_every_key_leaves_honest_memory_flat():
    honest = start_dht(NodeKey.generate(), record_validators=validators())
    dhts: list[hivemind.DHT] = [honest]
    try:
        peers = visible_maddrs(honest)
        naive = start_dht(NodeKey.generate(), peers, check_if_identity_free=False)  # control: no validators
        dhts.append(naive)
        attacker = start_dht(NodeKey.generate(), peers, check_if_identity_free=False)
        dhts.append(attacker)
        keys = all_keys()
        honest.run_coroutine(partial(_flood, keys=keys, count=2, size=256, seed=0))  # warm up both sides
        held_before, rss_before = honest.run_coroutine(_held), rss(honest.pid)
        naive_before = naive.run_coroutine(_held)
        t0, sent = time.monotonic(), 0
        # bounded: 2 rounds x 11 keys x 40 values x 64 KiB = ~55 MiB offered (few large stores: the
        # store RPCs, not the bytes, are what cost CPU; 5 rounds of 32 KiB took 140 s of a full run)
        for seed in range(1, 3):
            sent += attacker.run_coroutine(partial(_flood, keys=keys, count=40, size=64 << 10, seed=seed))
            assert time.monotonic() - t0 < 300
        assert sent >= 50 << 20
        assert naive.run_coroutine(_held) > naive_before  # the flood does reach peers (3 < hivemind's replicas)
        for key in keys:  # nothing of it is readable from the honest peer
            found = honest.get(key, latest=True)
            assert found is None or not found.value, key
        growth = rss(honest.pid) - rss_before
        assert honest.run_coroutine(_held) == held_before
        assert growth < 16 << 20, f"honest DHT process grew {growth / 2**20:.1f} MiB after {sent / 2**20:.0f} MiB"
    finally:
        for d in dhts:
            d.shutdown()


@pytest.mark.parametrize("size", [MAX_ANNOUNCE_BYTES + 1024])
def test_oversize_values_are_refused_before_parsing(size):
    vals = validators()
    for key in all_keys():
        assert not admitted(vals, key, HOST.peer_id, b"{" + b" " * size)
