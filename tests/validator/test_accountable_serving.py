"""End to end on 127.0.0.1 (devnet chain process, hivemind peers, tiny model): a hoster that
computes probes and `rpc_forward` honestly but alters what it returns to clients.

Nodes: the liar (hoster only), two honest hoster+validator nodes and one validator node, all
serving [0, 8). A client with the chain registry is steered to the liar; its checks catch
the liar at the first step, recover (the generation equals local transformers greedy
tokens), and publish evidence; every validator recomputes it, the liar's hoster score of that
epoch is 0 and its on-chain share in the next proposal is <= 0.05.
"""

from __future__ import annotations

import time

import pytest
import torch

from chain.devnet import DevnetChain
from subnet.model.blocks import model_uid
from subnet.swarm.chain_view import ChainRegistry
from subnet.swarm.evidence_records import EvidencePolicy
from tests.hoster.tamper_hoster import tamper_servicer
from tests.validator.support import ChainNet, Node
from validator.evidence import EvidenceChecker, local_reference

pytestmark = pytest.mark.slow

BLOCK_TIME = 0.4
EPOCH_LENGTH = 20
NEW_TOKENS = 10


def _greedy(model_path: str, ids: torch.Tensor, n: int) -> list[int]:
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    with torch.no_grad():
        out = ref.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def test_hoster_altering_client_traffic_is_caught_and_zeroed(tmp_path, tiny_llama):
    from subnet.client import DistributedModelForCausalLM

    net = ChainNet(tmp_path, block_time=BLOCK_TIME, epoch_length=EPOCH_LENGTH)
    nodes: list[Node] = []
    model = None
    try:
        ops = [net.add_operator() for _ in range(4)]
        net.activate()
        peers: list[str] = []
        for op in ops:
            nodes.append(Node(net, op, peers))
            peers = peers or nodes[0].maddrs
        liar, honest, validator_only = nodes[0], nodes[1:3], nodes[3]
        uid = model_uid(tiny_llama)

        def checker(node: Node) -> EvidenceChecker:
            policy = EvidencePolicy(net.subnet_id, ChainRegistry(lambda: DevnetChain(net.url), net.subnet_id))
            return EvidenceChecker(node.dht, policy, uid, local_reference(tiny_llama, 8))

        liar.start_roles(model=tiny_llama, blocks=(0, 8), validator=False)
        tamper_servicer(liar.hoster.servicer, 0.3)  # test-only: alters inference steps, never probes or forwards
        for node in honest:
            node.start_roles(model=tiny_llama, blocks=(0, 8), evidence=checker(node))
        validator_only.start_roles(evidence=checker(validator_only))

        ids = torch.tensor([[1, 5, 9, 23, 42, 7]])
        want = _greedy(tiny_llama, ids, NEW_TOKENS)
        registry = ChainRegistry(lambda: DevnetChain(net.url), net.subnet_id)
        model = DistributedModelForCausalLM.from_pretrained(tiny_llama, nodes[0].maddrs, registry=registry,
                                                            request_timeout=60)
        hosters = {n.peer_id for n in [liar, *honest]}
        deadline = time.monotonic() + 120
        while {s.peer_id for s in model.runtime.run(model.manager.servers(force=True), timeout=60)} != hosters:
            assert time.monotonic() < deadline, "the client never saw the three hosters"
            time.sleep(0.5)
        for node in honest:  # steer routes to the liar (the checks still use the honest hosters)
            model.manager.stats.pings[node.peer_id] = 5.0
        caught_at = net.epoch_info().epoch
        got = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)[0, ids.shape[1]:].tolist()
        assert got == want
        assert model.manager.bans.is_banned(liar.peer_id)

        # every validator zeroes the liar in the epoch of the receipt or the next one (evidence published late)
        validators = [n.validator for n in [*honest, validator_only]]
        deadline = time.monotonic() + 6 * EPOCH_LENGTH * BLOCK_TIME + 60
        scored = None
        while scored is None:
            assert time.monotonic() < deadline, "no validator accepted the evidence within one epoch"
            for e in (caught_at, caught_at + 1):
                if all(liar.peer_id in v.reports.get(e, {}).get("evidence_guilty", []) for v in validators):
                    scored = e
                    break
            time.sleep(0.5)
        for v in validators:
            rep = v.reports[scored]
            assert rep["hoster_scores"].get(liar.peer_id, 0.0) == 0.0
            assert all(rep["hoster_scores"][n.peer_id] > 0.99 for n in honest)
        # the proposal of `scored` (made early in scored + 1) gives the liar <= 0.05 of the total
        net.wait_epoch(scored + 2, timeout=3 * EPOCH_LENGTH * BLOCK_TIME + 60)
        sub = net.owner.get_consensus_submission(net.subnet_id, scored + 1)
        assert sub is not None
        data = {x.node_id: x.score for x in sub.data}
        assert data.get(liar.op.node_id, 0) / sum(data.values()) <= 0.05
        result = net.owner.get_epoch_result(net.subnet_id, scored + 1)
        assert result is not None and result["outcome"] == "accepted", result
    finally:
        if model is not None:
            model.close()
        for n in nodes:
            n.stop()
        net.close()
