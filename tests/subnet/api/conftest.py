"""Fixtures: one tiny long-context model in a LocalTransformersBackend, live uvicorn apps over it."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from api_support import MODEL, live_server  # noqa: E402,F401


@pytest.fixture(scope="module")
def api_url(local_backend):
    from subnet.api import create_app

    app = create_app(local_backend, max_concurrent_streams=4, max_prompt_tokens=256, max_tokens_limit=50000)
    with live_server(app) as url:
        yield url


class LiveSubnet:
    """A real devnet chain process with an active 3-node subnet that has settled one epoch
    (proposal + attestations + rewards), and a real DHT holding two hosters' announcements."""

    def __init__(self, tmp_dir: Path, model: str, num_blocks: int = 8):
        from chain.devnet import DevnetChain, dev_accounts, start_devnet_process
        from chain.types import UNIT, ScoreEntry
        from keys import AccountKey, NodeKey
        from subnet.swarm.dht import start_dht

        self.model = model
        self.process = start_devnet_process(tmp_dir / "chain.db", block_time=0.2, epoch_length=10,
                                            log_path=tmp_dir / "chain.log")
        self.dhts: list = []
        self.chains: list = []
        try:
            self.url = self.process.url
            coldkeys = dev_accounts(4)[1:4]
            faucet = DevnetChain(self.url, coldkey=dev_accounts(1)[0])
            owner = DevnetChain(self.url, coldkey=coldkeys[0])
            self.chains += [faucet, owner]
            self.subnet_id = owner.register_subnet("api-test", min_stake=100 * UNIT, max_stake=1000 * UNIT,
                                                   initial_coldkeys=[k.address for k in coldkeys])
            owner.add_delegate_stake(self.subnet_id, 100 * UNIT)  # without it the subnet earns no node emissions
            self.node_keys = [NodeKey.generate() for _ in coldkeys]
            ops = {}
            for cold, nk in zip(coldkeys, self.node_keys, strict=True):
                hot = AccountKey.generate()
                faucet.fund(hot.address, UNIT)
                c = DevnetChain(self.url, coldkey=cold, hotkey=hot)
                self.chains.append(c)
                nid = c.register_subnet_node(self.subnet_id, hotkey=hot.address, peer_id=nk.peer_id, stake=100 * UNIT)
                ops[nid] = c
            owner.activate_subnet(self.subnet_id)
            self.node_ids = sorted(ops)
            e = faucet.wait_for_epoch(faucet.get_epoch_info().epoch + 1, timeout=60).epoch
            elected = owner.get_elected_validator(self.subnet_id, e)
            self.scores = {nid: (i + 2) * UNIT // 5 for i, nid in enumerate(self.node_ids)}  # 0.4 0.6 0.8
            ops[elected].propose_attestation(self.subnet_id, [ScoreEntry(n, s) for n, s in sorted(self.scores.items())])
            for nid, c in ops.items():
                if nid != elected:
                    c.attest(self.subnet_id)
            self.settled_epoch = e
            faucet.wait_for_epoch(e + 1, timeout=60)
            # Two hosters announce halves of the model (with one block of overlap).
            self.dhts.append(start_dht(self.node_keys[0], check_if_identity_free=False))
            from subnet.swarm.dht import visible_maddrs

            self.initial_peers = visible_maddrs(self.dhts[0])
            self.dhts.append(start_dht(self.node_keys[1], self.initial_peers, check_if_identity_free=False))
            self.spans = [(0, num_blocks // 2 + 1), (num_blocks // 2, num_blocks)]
            for dht, nk, (start, end) in zip(self.dhts, self.node_keys, self.spans, strict=False):
                _announce(dht, nk, model, start, end, num_blocks)
        except BaseException:
            self.close()
            raise

    def view(self):
        from chain.devnet import DevnetChain
        from subnet.api.subnet_view import ChainSubnetView

        chain = DevnetChain(self.url)
        self.chains.append(chain)
        return ChainSubnetView(chain, self.subnet_id, dht=self.dhts[0], models=[self.model])

    def close(self) -> None:
        for c in self.chains:
            c.close()
        for d in self.dhts:
            d.shutdown()
        self.process.stop()


def _announce(dht, key, model: str, start: int, end: int, num_blocks: int) -> None:
    """Write an announcement exactly as docs/PROTOCOL.md specifies (sealed, subkey = peer id)."""
    from hivemind.utils import get_dht_time

    from subnet.swarm.announcements import servers_key
    from subnet.swarm.records import seal

    payload = {"peer_id": key.peer_id, "model": model, "start": start, "end": end, "throughput": 100.0,
               "cache_tokens_free": 4096, "cache_tokens_total": 8192, "version": "test", "state": "online",
               "num_blocks": num_blocks, "hidden_size": 64, "dtype": "float32",
               # replay protection: issue time (ns) and signed validity, which clients' DHTs check
               "seq": time.time_ns(), "valid_until": get_dht_time() + 600}
    ok = dht.store(servers_key(model), seal(key, "announce", payload), payload["valid_until"], subkey=key.peer_id)
    assert ok


@pytest.fixture(scope="module")
def live_subnet(tmp_path_factory):
    subnet = LiveSubnet(tmp_path_factory.mktemp("api-subnet"), MODEL)
    yield subnet
    subnet.close()
