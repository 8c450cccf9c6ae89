"""End to end on 127.0.0.1 (devnet chain process, hivemind peers, tiny model): a hoster that
computes probes and `rpc_forward` honestly but alters what it returns to clients.

Nodes: the liar (a hoster altering traffic, with an unmodified validator duty, since any registered
node may be elected to propose), two honest hoster+validator nodes and one validator node; the
hosters serve [0, 8).
- Client checks: a client with the chain registry is steered to the liar; its checks catch
  the liar at the first step, recover (the generation equals local transformers greedy
  tokens), and publish evidence.
- Spot checks (no client at all): the validators' spot-check sessions, ordinary
  `rpc_inference` traffic from fresh identities, catch the liar and publish evidence.
Either way every validator recomputes the evidence, the liar's hoster score of that epoch is
0 and its on-chain share in the next proposal is <= 0.05.
"""

from __future__ import annotations

import time

import pytest
import torch

from chain.devnet import DevnetChain
from subnet.model.blocks import load_config, model_uid
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


class Subnet:
    """The four nodes; `spot_checks` also starts every validator's spot-check duty."""

    def __init__(self, tmp_path, model_path: str, *, spot_checks: bool):
        self.net = ChainNet(tmp_path, block_time=BLOCK_TIME, epoch_length=EPOCH_LENGTH)
        self.nodes: list[Node] = []
        self.spot: list = []
        self.runners: list = []
        try:
            self._start(model_path, spot_checks)
        except BaseException:
            self.close()
            raise

    def _start(self, model_path: str, spot_checks: bool) -> None:
        from subnet.client.spot_session import SpotCheckClient
        from validator.spot_checks import SpotCheckDuty, local_embedding

        net = self.net
        ops = [net.add_operator() for _ in range(4)]
        net.activate()
        peers: list[str] = []
        for op in ops:
            self.nodes.append(Node(net, op, peers))
            peers = peers or self.nodes[0].maddrs
        self.liar, self.honest, self.validator_only = self.nodes[0], self.nodes[1:3], self.nodes[3]
        uid = model_uid(model_path)

        def policy() -> EvidencePolicy:
            return EvidencePolicy(net.subnet_id, ChainRegistry(lambda: DevnetChain(net.url), net.subnet_id))

        # The liar's node runs an (unmodified) validator duty too: every registered node may be elected
        # to propose, and a hoster-only liar elected for the epoch after it was caught (a 1 in 4 draw)
        # left that epoch without the proposal this test checks. Its reports are not among the checked.
        self.liar.start_roles(model=model_path, blocks=(0, 8),
                              evidence=EvidenceChecker(self.liar.dht, policy(), uid, local_reference(model_path, 8)))
        tamper_servicer(self.liar.hoster.servicer, 0.3)  # test-only: alters inference steps, never probes or forwards
        for node in self.honest:
            node.start_roles(model=model_path, blocks=(0, 8),
                             evidence=EvidenceChecker(node.dht, policy(), uid, local_reference(model_path, 8)))
        self.validator_only.start_roles(evidence=EvidenceChecker(self.validator_only.dht, policy(), uid,
                                                                 local_reference(model_path, 8)))
        self.validators = [n.validator for n in [*self.honest, self.validator_only]]
        if spot_checks:
            vocab = load_config(model_path).vocab_size
            for node in [*self.honest, self.validator_only]:
                runner = SpotCheckClient(peers, uid)
                self.runners.append(runner)
                self.spot.append(SpotCheckDuty(node.dht, node.op.node_key, policy(), uid, vocab, runner.run,
                                               local_reference(model_path, 8), local_embedding(model_path)).start())

    def wait_all_scored(self) -> int:
        """An epoch every validator scored with all three hosters in it: the subnet is warmed up.

        Traffic sent before that may land in an epoch a hoster joined after its commit window, and
        that hoster is then absent from the epoch's scores rather than honest-and-scored.
        """
        hosters = {n.peer_id for n in [self.liar, *self.honest]}
        deadline = time.monotonic() + 6 * EPOCH_LENGTH * BLOCK_TIME + 60
        while True:
            assert time.monotonic() < deadline, "no epoch was scored with every hoster in it"
            common = set.intersection(*({e for e, rep in v.reports.items()
                                         if hosters <= set(rep.get("hoster_scores", {}))}
                                        for v in self.validators))
            if common:
                return max(common)
            time.sleep(0.5)

    def wait_zeroed(self, first_epoch: int) -> int:
        """The epoch (first_epoch or the next) in which every validator zeroed the liar by evidence."""
        deadline = time.monotonic() + 6 * EPOCH_LENGTH * BLOCK_TIME + 60
        while True:
            assert time.monotonic() < deadline, "no validator accepted the evidence within one epoch"
            for e in (first_epoch, first_epoch + 1):
                if all(self.liar.peer_id in v.reports.get(e, {}).get("evidence_guilty", []) for v in self.validators):
                    return e
            time.sleep(0.5)

    def check_next_proposal(self, scored: int) -> None:
        net, liar = self.net, self.liar
        for v in self.validators:
            rep = v.reports[scored]
            assert rep["hoster_scores"].get(liar.peer_id, 0.0) == 0.0
            assert all(rep["hoster_scores"][n.peer_id] > 0.99 for n in self.honest)
        # the proposal of `scored` (made early in scored + 1) gives the liar <= 0.05 of the total
        net.wait_epoch(scored + 2, timeout=3 * EPOCH_LENGTH * BLOCK_TIME + 60)
        sub = net.owner.get_consensus_submission(net.subnet_id, scored + 1)
        assert sub is not None
        data = {x.node_id: x.score for x in sub.data}
        # the liar's node earns what the validator-only node earns for validating, and for hosting
        # (what the honest hoster+validator nodes earn beyond that) at most 0.05 of the total
        hosting = data.get(liar.op.node_id, 0) - data[self.validator_only.op.node_id]
        assert hosting / sum(data.values()) <= 0.05, data
        assert all(data[n.op.node_id] - data[self.validator_only.op.node_id] > 0.1 * sum(data.values())
                   for n in self.honest), data
        result = net.owner.get_epoch_result(net.subnet_id, scored + 1)
        assert result is not None and result["outcome"] == "accepted", result

    def close(self) -> None:
        for d in self.spot:
            d.stop()
        for r in self.runners:
            r.close()
        for n in self.nodes:
            n.stop()
        self.net.close()


def test_hoster_altering_client_traffic_is_caught_and_zeroed(tmp_path, tiny_llama):
    from subnet.client import DistributedModelForCausalLM

    sub = Subnet(tmp_path, tiny_llama, spot_checks=False)
    net, liar, honest = sub.net, sub.liar, sub.honest
    model = None
    try:
        ids = torch.tensor([[1, 5, 9, 23, 42, 7]])
        want = _greedy(tiny_llama, ids, NEW_TOKENS)
        registry = ChainRegistry(lambda: DevnetChain(net.url), net.subnet_id)
        model = DistributedModelForCausalLM.from_pretrained(tiny_llama, sub.nodes[0].maddrs, registry=registry,
                                                            request_timeout=60)
        hosters = {n.peer_id for n in [liar, *honest]}
        deadline = time.monotonic() + 120
        while {s.peer_id for s in model.runtime.run(model.manager.servers(force=True), timeout=60)} != hosters:
            assert time.monotonic() < deadline, "the client never saw the three hosters"
            time.sleep(0.5)
        for node in honest:  # steer routes to the liar (the checks still use the honest hosters)
            model.manager.stats.pings[node.peer_id] = 5.0
        sub.wait_all_scored()  # every hoster is in the epochs' scores from now on
        caught_at = net.epoch_info().epoch
        got = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)[0, ids.shape[1]:].tolist()
        assert got == want
        assert model.manager.bans.is_banned(liar.peer_id)

        sub.check_next_proposal(sub.wait_zeroed(caught_at))
    finally:
        if model is not None:
            model.close()
        sub.close()


def test_spot_checks_catch_a_hoster_that_is_honest_only_on_probes(tmp_path, tiny_llama):
    sub = Subnet(tmp_path, tiny_llama, spot_checks=True)
    try:
        sub.wait_all_scored()
        start = sub.net.epoch_info().epoch
        scored = sub.wait_zeroed(start + 1)
        sub.check_next_proposal(scored)
        results = [r["results"] for d in sub.spot for r in d.reports.values()]
        assert any(r.get(sub.liar.peer_id) == "lied" for r in results), results
        assert not any(r.get(sub.liar.peer_id) == "ok" for r in results), results  # never passes a spot check
        for r in results:  # honest hosters never fail one by lying
            assert all(r.get(n.peer_id) != "lied" for n in sub.honest), r
        assert any(r.get(n.peer_id) == "ok" for r in results for n in sub.honest), results
    finally:
        sub.close()
