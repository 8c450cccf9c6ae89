"""Registered-only routing over a devnet chain: an unregistered peer announcing a huge
throughput gets no sessions when the client has a chain registry (real DHT peers on 127.0.0.1)."""

from __future__ import annotations

import pytest

from chain.devnet import DevnetChain
from hoster.announce import Announcer
from keys import NodeKey
from subnet.client.manager import SequenceManager
from subnet.client.routing import find_route
from subnet.client.runtime import ClientRuntime
from subnet.swarm.announcements import Announcement, AnnouncementValidator
from subnet.swarm.chain_view import ChainRegistry
from subnet.swarm.dht import start_dht, visible_maddrs
from tests.validator.support import ChainNet

MODEL = "registered-test"
N = 8


def payload(key: NodeKey, throughput: float) -> dict:
    return Announcement(peer_id=key.peer_id, model=MODEL, start=0, end=4, num_blocks=4, hidden_size=64,
                        throughput=throughput, cache_tokens_free=1000, cache_tokens_total=1000).to_payload()


def test_claimed_throughput_is_capped_and_measurements_win():
    honest = Announcement("h", MODEL, 0, 4, 4, 64, throughput=10.0)
    liar = Announcement("x", MODEL, 0, 4, 4, 64, throughput=1e9)
    other = Announcement("o", MODEL, 0, 4, 4, 64, throughput=10.0)
    pings = {"h": 0.01, "x": 0.01, "o": 0.01}
    # measured: the liar's steps take 1 s, the honest ones' 0.05 s
    route = find_route([honest, liar, other], 0, 4, pings=pings, step_times={"h": 0.05, "x": 1.0, "o": 0.06})
    assert [s.peer_id for s in route] == ["h"]


@pytest.mark.slow
def test_unregistered_hoster_with_huge_claim_gets_no_sessions(tmp_path):
    net = ChainNet(tmp_path, block_time=0.25, epoch_length=20)
    dhts, runtimes = [], []
    try:
        op = net.add_operator()
        net.activate()
        registry = ChainRegistry(lambda: DevnetChain(net.url), net.subnet_id)
        boot = start_dht(op.node_key, record_validators=[AnnouncementValidator(model_uids=[MODEL],
                                                                               registry=registry)])
        dhts.append(boot)
        outsider = NodeKey.generate()
        attacker = start_dht(outsider, visible_maddrs(boot), check_if_identity_free=False)
        dhts.append(attacker)
        client_dht = start_dht(NodeKey.generate(), visible_maddrs(boot), client_mode=True)
        dhts.append(client_dht)
        Announcer(boot, op.node_key, MODEL, lambda: payload(op.node_key, 10.0), period=1000).publish()
        Announcer(attacker, outsider, MODEL, lambda: payload(outsider, 1e9), period=1000).publish()

        def sessions(reg) -> list[str]:
            rt = ClientRuntime(client_dht)
            runtimes.append(rt)
            m = SequenceManager(rt, MODEL, 4, registry=reg)
            for p in (op.peer_id, outsider.peer_id):
                m.stats.record_ping(p, 0.01)  # no servicer runs here: skip the rpc_info pings
            out = []
            for _ in range(N):
                route = rt.run(m.make_route(), timeout=30)
                m.stats.acquire(route)
                out += [s.peer_id for s in route]
            return out

        # without a registry the attacker's own DHT copy is read and its claim wins sessions
        assert outsider.peer_id in sessions(None)
        chosen = sessions(registry)
        assert chosen.count(outsider.peer_id) == 0 and chosen.count(op.peer_id) == N
    finally:
        for rt in runtimes:
            rt.close()
        for d in dhts:
            d.shutdown()
        net.close()
