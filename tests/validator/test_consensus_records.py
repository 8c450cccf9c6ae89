"""Admission of consensus records: pure policy checks, then real hivemind peers + devnet chain."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import partial

import hivemind
import pytest
from hivemind.dht.routing import DHTID
from hivemind.dht.storage import DictionaryDHTValue
from hivemind.utils import get_dht_time

from chain.devnet import DevnetChain
from chain.types import NodeClass, SubnetNode
from consensus.phases import RecordKind
from consensus.probe import make_probe_spec
from keys import NodeKey
from subnet.swarm.chain_view import ChainRegistry, EpochPosition
from subnet.swarm.dht import start_dht, visible_maddrs
from subnet.swarm.epoch_records import ConsensusRecordError, consensus_key
from subnet.swarm.record_admission import ConsensusRecordPolicy, ConsensusRecordValidator
from subnet.swarm.record_store import fetch_records, store_record
from subnet.swarm.records import seal
from tests.validator.support import ChainNet
from tests.waiting import wait_until

SUBNET = 7
BPE = 20


@dataclass
class FixedRegistry:
    """A registry with given values (the chain-backed one is exercised further below)."""

    view_: EpochPosition
    nodes: dict[str, NodeClass] = field(default_factory=dict)
    elected: str | None = None
    rand: bytes = bytes(range(32))

    def view(self) -> EpochPosition:
        return self.view_

    def node(self, peer_id):
        cls = self.nodes.get(peer_id)
        return None if cls is None else SubnetNode(SUBNET, 1, "c", "h", peer_id, cls, 0, 1.0)

    def elected_peer(self, epoch):
        return self.elected

    def randomness(self, epoch):
        return self.rand


def at(epoch: int, block_in_epoch: int) -> EpochPosition:
    return EpochPosition(epoch, epoch * BPE + block_in_epoch, BPE, block_in_epoch, 0.25)


VAL, HOST, OUTSIDER = NodeKey.generate(), NodeKey.generate(), NodeKey.generate()


def policy(view: EpochPosition, **kw) -> ConsensusRecordPolicy:
    reg = FixedRegistry(view, {VAL.peer_id: NodeClass.VALIDATOR, HOST.peer_id: NodeClass.IDLE}, elected=VAL.peer_id)
    return ConsensusRecordPolicy(SUBNET, reg, **kw)


def commit_payload(epoch: int, block: int, subnet: int = SUBNET) -> dict:
    return {"subnet": subnet, "epoch": epoch, "block": block, "commit": "ab" * 32, "blocks": [0, 1], "parts": 1}


def test_valid_hoster_commit_accepted():
    p = policy(at(5, 6))
    rec = seal(HOST, "hoster_commit", commit_payload(5, 5 * BPE + 4))
    opened = p.check(rec, HOST.peer_id, expected=(5, "hoster_commit"))
    assert opened.peer_id == HOST.peer_id


@pytest.mark.parametrize(
    "case,reason",
    [
        ("unregistered", "not a node"),
        ("subkey", "subkey"),
        ("bad_sig", "signature"),
        ("class", "class"),
        ("before_window", "outside its window"),
        ("after_window", "outside its window"),
        ("future_block", "future"),
        ("old_epoch", "epoch"),
        ("future_epoch", "epoch"),
        ("other_subnet", "subnet"),
        ("replay_key", "another key"),
        ("oversize", "exceeds"),
        ("schema", "commit"),
        ("extra_field", "fields"),
    ],
)
def test_rejections(case, reason):
    view = at(5, 12)
    p = policy(view, size_limits={"hoster_commit": 600})
    signer, subkey = HOST, HOST.peer_id
    payload = commit_payload(5, 5 * BPE + 4)
    kind = "hoster_commit"
    key_bytes = None
    if case == "unregistered":
        signer, subkey = OUTSIDER, OUTSIDER.peer_id
    elif case == "subkey":
        subkey = VAL.peer_id
    elif case == "class":
        kind, payload = "validator_commit", {"subnet": SUBNET, "epoch": 5, "block": 5 * BPE + 12, "commit": "cd" * 32,
                                             "parts": 1}
    elif case == "before_window":
        payload["block"] = 5 * BPE + 1
    elif case == "after_window":
        payload["block"] = 5 * BPE + 11
    elif case == "future_block":
        p = policy(at(5, 4))
        payload["block"] = 5 * BPE + 8
    elif case == "old_epoch":
        payload = commit_payload(3, 3 * BPE + 4)
    elif case == "future_epoch":
        payload = commit_payload(6, 6 * BPE + 4)
    elif case == "other_subnet":
        payload = commit_payload(5, 5 * BPE + 4, subnet=8)
    elif case == "replay_key":
        from subnet.swarm.epoch_records import key_id_bytes

        p = policy(at(6, 2))
        payload = commit_payload(5, 5 * BPE + 4)
        key_bytes = key_id_bytes(consensus_key(SUBNET, 6, kind))
    elif case == "oversize":
        payload["blocks"] = list(range(200))
    elif case == "schema":
        payload["commit"] = "zz"
    elif case == "extra_field":
        payload["junk"] = 1
    rec = seal(signer, kind, payload)
    if case == "bad_sig":
        obj = json.loads(rec)
        obj["payload"]["blocks"] = [0]
        rec = json.dumps(obj).encode()
    with pytest.raises(ConsensusRecordError, match=reason):
        p.check(rec, subkey, key_bytes=key_bytes)


def test_previous_epoch_records_still_readable():
    p = policy(at(6, 15))
    rec = seal(VAL, "validator_commit", {"subnet": SUBNET, "epoch": 5, "block": 5 * BPE + 14, "commit": "cd" * 32,
                                         "parts": 1})
    assert p.check(rec, VAL.peer_id).kind == "validator_commit"


def test_a_late_read_still_sees_the_epoch_before_the_previous():
    """A validator scoring e reads e-1's commits; if the chain moved on to e+1 meanwhile (a loaded
    machine), the read (which names its epoch) still admits them, while a store would not."""
    p = policy(at(7, 1))
    rec = seal(VAL, "validator_commit", {"subnet": SUBNET, "epoch": 5, "block": 5 * BPE + 14, "commit": "cd" * 32,
                                         "parts": 1})
    assert p.check(rec, VAL.peer_id, expected=(5, "validator_commit")).kind == "validator_commit"
    with pytest.raises(ConsensusRecordError, match="chain is at epoch 7"):
        p.check(rec, VAL.peer_id)
    with pytest.raises(ConsensusRecordError, match="chain is at epoch 8"):
        policy(at(8, 1)).check(rec, VAL.peer_id, expected=(5, "validator_commit"))


def test_probe_rules():
    view = at(5, 1)
    spec = make_probe_spec(bytes(range(32)), SUBNET, 5, hidden=16, num_blocks=4)
    payload = {**spec.to_payload(), "block": 5 * BPE + 1}
    assert policy(view).check(seal(VAL, "probe", payload), VAL.peer_id).kind == "probe"
    other = NodeKey.generate()
    reg = FixedRegistry(view, {VAL.peer_id: NodeClass.VALIDATOR, other.peer_id: NodeClass.VALIDATOR}, VAL.peer_id)
    with pytest.raises(ConsensusRecordError, match="elected"):
        ConsensusRecordPolicy(SUBNET, reg).check(seal(other, "probe", payload), other.peer_id)
    # after p=0.10 any validator may post it
    late = {**payload, "block": 5 * BPE + 2}
    reg.view_ = at(5, 2)
    assert ConsensusRecordPolicy(SUBNET, reg).check(seal(other, "probe", late), other.peer_id)
    bad_seed = {**payload, "seed": os.urandom(32).hex()}
    with pytest.raises(ConsensusRecordError, match="seed"):
        policy(view).check(seal(VAL, "probe", bad_seed), VAL.peer_id)
    with pytest.raises(ConsensusRecordError, match="class"):
        policy(view).check(seal(HOST, "probe", payload), HOST.peer_id)


def test_reveal_parts_and_body_rules():
    from subnet.swarm.epoch_records import CHUNK_CHARS, check_reveal_body, join_reveal, key_id_bytes, split_reveal

    p = policy(at(6, 11))
    body = {"salt": "00" * 16, "scores_epoch": 5, "scores": {f"peer{i:05d}": 10**18 - i for i in range(400)}}
    chunks = split_reveal(body)
    assert len(chunks) > 1 and all(len(c) <= CHUNK_CHARS for c in chunks)
    records = []
    for i, chunk in enumerate(chunks):
        payload = {"subnet": SUBNET, "epoch": 6, "block": 6 * BPE + 10, "part": i, "parts": len(chunks), "data": chunk}
        key = key_id_bytes(consensus_key(SUBNET, 6, "validator_reveal", i))
        records.append(p.check(seal(VAL, "validator_reveal", payload), VAL.peer_id, key_bytes=key))
    assert join_reveal("validator_reveal", 6, list(reversed(records)), len(chunks)) == body
    with pytest.raises(ConsensusRecordError, match="incomplete"):
        join_reveal("validator_reveal", 6, records[1:], len(chunks))
    # a part stored under another part's key is a replay
    with pytest.raises(ConsensusRecordError, match="another key"):
        payload = {"subnet": SUBNET, "epoch": 6, "block": 6 * BPE + 10, "part": 0, "parts": 2, "data": "x"}
        p.check(seal(VAL, "validator_reveal", payload), VAL.peer_id,
                key_bytes=key_id_bytes(consensus_key(SUBNET, 6, "validator_reveal", 1)))
    with pytest.raises(ConsensusRecordError, match="previous epoch"):
        check_reveal_body("validator_reveal", {**body, "scores_epoch": 6}, 6)
    with pytest.raises(ConsensusRecordError):
        check_reveal_body("hoster_reveal", {"salt": "00" * 16, "outputs": {"01": "AAAA"}}, 6)
    with pytest.raises(ConsensusRecordError, match="chars"):
        big = {"subnet": SUBNET, "epoch": 6, "block": 6 * BPE + 10, "part": 0, "parts": 1,
               "data": "x" * (CHUNK_CHARS + 1)}
        p.check(seal(VAL, "validator_reveal", big), VAL.peer_id)


def test_hivemind_validator_passes_foreign_keys_and_rejects_garbage_under_ours():
    from hivemind.dht.routing import DHTID
    from hivemind.dht.validation import DHTRecord
    from hivemind.utils.serializer import MSGPackSerializer

    v = ConsensusRecordValidator(policy(at(5, 6)))
    foreign = DHTRecord(DHTID.generate(source="mesh.v1/model/servers").to_bytes(), MSGPackSerializer.dumps("x"),
                        MSGPackSerializer.dumps(b"anything"), get_dht_time() + 10)
    assert v.validate(foreign)
    ours = DHTID.generate(source=consensus_key(SUBNET, 5, "hoster_commit")).to_bytes()
    garbage = DHTRecord(ours, MSGPackSerializer.dumps(HOST.peer_id), MSGPackSerializer.dumps(b"\x00garbage"),
                        get_dht_time() + 10)
    assert not v.validate(garbage)
    good_value = seal(HOST, "hoster_commit", commit_payload(5, 5 * BPE + 4))
    good = DHTRecord(ours, MSGPackSerializer.dumps(HOST.peer_id), MSGPackSerializer.dumps(good_value),
                     get_dht_time() + 10)
    assert v.validate(good)
    assert not v.validate(DHTRecord(ours, MSGPackSerializer.dumps(HOST.peer_id), MSGPackSerializer.dumps(good_value),
                                    get_dht_time() + 10**6))  # absurd expiration
    not_msgpack = DHTRecord(ours, MSGPackSerializer.dumps(HOST.peer_id), b"\xc1\xc1", get_dht_time() + 10)
    assert not v.validate(not_msgpack)


# ---- real peers + devnet chain -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    n = ChainNet(tmp_path_factory.mktemp("records-chain"), block_time=0.25, epoch_length=20)
    try:
        n.add_operator()
        n.add_operator()
        n.activate()
        yield n
    finally:
        n.close()


def _validator_for(url: str, subnet_id: int) -> ConsensusRecordValidator:
    registry = ChainRegistry(lambda: DevnetChain(url), subnet_id)
    return ConsensusRecordValidator(ConsensusRecordPolicy(subnet_id, registry))


async def _held_subkeys(_dht, node, key_id: DHTID) -> set[str]:
    """Subkeys this peer itself holds under `key_id`: its storage and cache, no network read."""
    out: set[str] = set()
    for store in (node.protocol.storage, node.protocol.cache):
        found = store.get(key_id)
        if found is None:
            continue
        if isinstance(found.value, DictionaryDHTValue):
            out |= {str(subkey) for subkey, _ in found.value.items()}
        else:
            out.add("<not a dictionary>")
    return out


def held(dht: hivemind.DHT, key: str) -> set[str]:
    return dht.run_coroutine(partial(_held_subkeys, key_id=DHTID.generate(source=key)))


async def _routing_peers(_dht, node) -> set[str]:
    return {str(peer) for peer in node.protocol.routing_table.peer_id_to_uid}


@pytest.mark.slow
def test_records_over_real_dht(net):
    """Two honest storers (a, b: the record validator) and an attacker x that stores anything.

    Stores go to every peer (3 peers < hivemind's 5 replicas) once the routing tables are full,
    so the attacker's writes do reach the honest peers; the checks are on what honest peers
    hold and what honest readers get. `store_record`'s return value is asserted only where
    every storer accepts: for a rejected write it reports whichever replica answered last,
    and the attacker accepts everything.
    """
    a, b = net.operators
    outsider = NodeKey.generate()
    sid = net.subnet_id
    dhts: list[hivemind.DHT] = []
    try:
        dht_a = start_dht(a.node_key, record_validators=[_validator_for(net.url, sid)])
        dhts.append(dht_a)
        peers = visible_maddrs(dht_a)
        dht_b = start_dht(b.node_key, peers, record_validators=[_validator_for(net.url, sid)],
                          check_if_identity_free=False)
        dhts.append(dht_b)
        dht_x = start_dht(outsider, peers, check_if_identity_free=False)  # attacker: runs no validator at all
        dhts.append(dht_x)
        reader = ConsensusRecordPolicy(sid, ChainRegistry(lambda: DevnetChain(net.url), sid))
        ids = {a.peer_id: dht_a, b.peer_id: dht_b, outsider.peer_id: dht_x}
        for me, d in ids.items():  # everyone knows everyone: each store reaches all three peers
            wait_until(lambda d=d, me=me: d.run_coroutine(_routing_peers) >= set(ids) - {me},
                       f"peer {me[-6:]} knows the other two")

        info = net.wait_progress(0.2, 0.4)
        e = info.epoch
        key_e, key_next = consensus_key(sid, e, "hoster_commit"), consensus_key(sid, e + 1, "hoster_commit")
        ttl = 60.0
        assert store_record(dht_a, a.node_key, sid, e, RecordKind.HOSTER_COMMIT,
                            {"commit": "11" * 32, "blocks": [0, 1], "parts": 1}, block=info.block, ttl=ttl)
        # unregistered signer: honest storers refuse it
        store_record(dht_x, outsider, sid, e, RecordKind.HOSTER_COMMIT,
                     {"commit": "22" * 32, "blocks": [0], "parts": 1}, block=info.block, ttl=ttl)
        # forged subkey: outsider writes a record signed by itself under a's subkey
        forged = seal(outsider, "hoster_commit", {"subnet": sid, "epoch": e, "block": info.block,
                                                  "commit": "33" * 32, "blocks": [0], "parts": 1})
        dht_x.store(key_e, forged, get_dht_time() + ttl, subkey=b.peer_id)
        # garbage and oversize values under the consensus key
        dht_x.store(key_e, b"\x00" * 10, get_dht_time() + ttl, subkey="junk")
        big = seal(b.node_key, "hoster_commit", {"subnet": sid, "epoch": e, "block": info.block,
                                                 "commit": "44" * 32, "blocks": list(range(1000)), "parts": 1})
        dht_x.store(key_e, big, get_dht_time() + ttl, subkey=b.peer_id)
        # replay of an epoch-e record under epoch e+1's key
        replay = seal(a.node_key, "hoster_commit", {"subnet": sid, "epoch": e, "block": info.block,
                                                    "commit": "55" * 32, "blocks": [0], "parts": 1})
        dht_x.store(key_next, replay, get_dht_time() + ttl, subkey=a.peer_id)

        # every store above returned after its replicas answered; the valid one is on both honest peers
        wait_until(lambda: held(dht_b, key_e) >= {a.peer_id}, "b holds a's commit")
        assert held(dht_a, key_e) == held(dht_b, key_e) == {a.peer_id}
        assert held(dht_a, key_next) == held(dht_b, key_next) == set()
        assert {a.peer_id, b.peer_id, "junk"} <= held(dht_x, key_e)  # the attacker kept its writes...
        got = fetch_records(dht_b, reader, e, "hoster_commit")  # ...honest readers do not see them
        assert set(got) == {a.peer_id}
        assert got[a.peer_id].payload["commit"] == "11" * 32
        raw = dht_a.get(key_e, latest=True)
        assert raw is not None and set(raw.value) == {a.peer_id}
        assert fetch_records(dht_b, reader, e + 1, "hoster_commit") == {}

        # writes outside the window: storers reject a commit that claims a reveal-window block
        info2 = net.wait_progress(0.55, 0.65)  # beyond the commit window + 1 block grace
        e2 = info2.epoch
        key_e2 = consensus_key(sid, e2, "hoster_commit")
        store_record(dht_b, b.node_key, sid, e2, RecordKind.HOSTER_COMMIT,
                     {"commit": "66" * 32, "blocks": [0], "parts": 1}, block=info2.block, ttl=ttl)
        assert b.peer_id not in held(dht_a, key_e2) | held(dht_b, key_e2)
        assert b.peer_id in held(dht_x, key_e2)  # the write did go out; only the attacker kept it
        assert b.peer_id not in fetch_records(dht_a, reader, e2, "hoster_commit")
        # every node keeps running after all that
        assert dht_a.is_alive() and dht_b.is_alive()
    finally:
        for d in dhts:
            d.shutdown()


def test_chain_outage_blocks_only_consensus_records():
    from hivemind.dht.routing import DHTID
    from hivemind.dht.validation import DHTRecord
    from hivemind.utils.serializer import MSGPackSerializer

    from chain.types import ChainUnavailableError

    class Down(FixedRegistry):
        def view(self):
            raise ChainUnavailableError("Unavailable", "chain down")

    v = ConsensusRecordValidator(ConsensusRecordPolicy(SUBNET, Down(at(5, 6), {HOST.peer_id: NodeClass.IDLE})))
    announce = seal(HOST, "announce", {"peer_id": HOST.peer_id})
    foreign = DHTRecord(DHTID.generate(source="mesh.v1/model/servers").to_bytes(),
                        MSGPackSerializer.dumps(HOST.peer_id),
                        MSGPackSerializer.dumps(announce), get_dht_time() + 10)
    assert v.validate(foreign)
    ours = DHTID.generate(source=consensus_key(SUBNET, 5, "hoster_commit")).to_bytes()
    good = DHTRecord(ours, MSGPackSerializer.dumps(HOST.peer_id),
                     MSGPackSerializer.dumps(seal(HOST, "hoster_commit", commit_payload(5, 5 * BPE + 4))),
                     get_dht_time() + 10)
    assert not v.validate(good)  # cannot be verified while the chain is unreachable
    assert v.rejected == 1
