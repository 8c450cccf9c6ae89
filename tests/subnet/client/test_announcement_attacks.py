"""Replayed, reordered-key and far-future copies of a live hoster's own signed announcements, stored
into the swarm by a peer that accepts anything: the hoster stays routable and no session is lost
(a real hoster process, a real client, an attacker DHT peer, all on 127.0.0.1)."""

from __future__ import annotations

import json
import time

import pytest

from keys import NodeKey
from subnet.client import DistributedModelForCausalLM
from subnet.swarm.announcements import MAX_ANNOUNCE_TTL, servers_key
from subnet.swarm.dht import start_dht

pytestmark = pytest.mark.slow

SESSIONS = 8


def _record(dht, key: str, subkey: str):
    """(value bytes, expiration) of `subkey` under `key` as a DHT read returns it, or None."""
    found = dht.get(key, latest=True)
    if found is None or not isinstance(found.value, dict) or subkey not in found.value:
        return None
    item = found.value[subkey]
    return item.value, item.expiration_time


def test_replayed_reordered_and_far_future_announcements_lose_no_session(swarm_factory, tiny_llama):
    swarm = swarm_factory()
    (victim,) = swarm.start_hosters(tiny_llama, [(0, 8)])
    model = DistributedModelForCausalLM.from_pretrained(tiny_llama, initial_peers=swarm.initial_peers,
                                                        request_timeout=30.0)
    attacker = start_dht(NodeKey.generate(), swarm.initial_peers, check_if_identity_free=False)  # stores anything
    try:
        assert [s.peer_id for s in model.wait_until_servable(90)] == [victim.peer_id]
        ids = model.tokenizer("Replayed announcements must not knock a hoster out", return_tensors="pt")["input_ids"]
        baseline = model.generate(ids, max_new_tokens=8).tolist()

        key = servers_key(model.model_uid)
        old = _record(attacker, key, victim.peer_id)
        assert old is not None
        deadline = time.monotonic() + 60
        while (new := _record(attacker, key, victim.peer_id)) is None or new[0] == old[0]:
            assert time.monotonic() < deadline, "the hoster never re-announced"
            time.sleep(0.5)  # the hoster re-announces every 2 s (--announce-period) with a higher seq
        now = time.time()
        body = json.loads(new[0])
        reordered = json.dumps(dict(reversed(list(body.items()))), separators=(",", ":")).encode()
        attacks = [(old[0], now + MAX_ANNOUNCE_TTL - 1),  # the older record, replayed with a fresh expiry
                   (reordered, now + MAX_ANNOUNCE_TTL - 1),  # the current one, keys in another order
                   (new[0], now + 10 * 365 * 86400)]  # the current one, expiring in ten years

        for i in range(SESSIONS):
            value, expiration = attacks[i % len(attacks)]
            attacker.store(key, value, expiration, subkey=victim.peer_id)
            servers = model.runtime.run(model.manager.servers(force=True), timeout=30)
            raw = model.runtime.dht.get(key, latest=True)
            assert [(s.peer_id, s.state) for s in servers] == [(victim.peer_id, "online")], (i, raw)
            assert model.generate(ids, max_new_tokens=8).tolist() == baseline
        assert not model.manager.bans.is_banned(victim.peer_id)
    finally:
        attacker.shutdown()
        model.close()
        swarm.shutdown()
