"""Cheaters against real nodes (devnet chain process, hivemind peers, tiny model hosters).

Honest: three hoster nodes (overlapping ranges, also running the validator duty) and one
validator node, all Validator class. Cheaters (registered after activation, so Idle: their
hoster records are admitted) run from one attacker DHT peer that has no record validator:
a lazy hoster (random outputs), a copycat (copies another hoster's commit and reveal), a late
revealer (reveals after the window with a backdated block), a hoster whose reveal does not
match its commit, a replayer (re-posts last epoch's records), and an unregistered peer.
Then, at a planned epoch, whoever is elected proposes altered scores.
"""

from __future__ import annotations

import pytest
import torch

from chain.types import NodeClass
from consensus.encoding import encode_tensor
from consensus.phases import REVEAL_END, RecordKind, block_window
from hoster.duty import HosterDuty, HosterEpoch
from keys import NodeKey
from subnet.swarm.epoch_records import consensus_key, split_reveal
from subnet.swarm.record_store import fetch_records, fetch_reveals, record_ttl, store_record, store_reveal, store_sealed
from subnet.swarm.records import seal
from tests.validator.support import ChainNet, Node
from validator.duty import ValidatorDuty

pytestmark = pytest.mark.slow

# 12 s epochs. With 8 s ones (0.4 s blocks) an honest hoster whose probe fetch waited on a slow DHT
# missed a whole commit window now and then (quiet file-order run: KeyError on its status), and an
# elected validator its 1.2 s propose window (stress-test).
BLOCK_TIME = 0.6
EPOCH_LENGTH = 20
RANGES = [(0, 5), (3, 8), (0, 8)]


class LiePlan:
    epochs: set[int] = set()


class PlannedLiarDuty(ValidatorDuty):
    """Honest, except that when elected in a planned epoch it proposes scores favouring itself."""

    def build_proposal(self, prev):
        data = super().build_proposal(prev)
        if prev.epoch + 1 in LiePlan.epochs:
            me = prev.node_ids.get(self.peer_id)
            data = [(n, 10**18 if n == me else 0) for n, _ in data]
        return data


class LazyDuty(HosterDuty):
    """Commits and reveals validly, but never runs the model: random outputs."""

    def run_block(self, spec, block):
        return torch.rand(spec.shape, dtype=torch.float32) * 2 - 1


class MismatchDuty(HosterDuty):
    """Commits to its real outputs, reveals slightly different ones."""

    def reveal_body(self, st):
        body = super().reveal_body(st)
        if st.committed_block is not None:  # only the reveal is altered, not the part count
            import base64

            from consensus.encoding import decode_tensor

            last = max(st.outputs)
            t = decode_tensor(st.outputs[last]) + 1e-3
            body["outputs"][str(last)] = base64.b64encode(encode_tensor(t)).decode()
        return body


class LateDuty(HosterDuty):
    """Honest outputs and commit, reveal only after validators froze the reveals, claiming an in-window block."""

    def _reveal(self, st, view):
        pass

    def tick(self, view):
        super().tick(view)
        st = self.epochs.get(view.epoch)
        if st is not None and st.committed_block is not None and st.revealed_block is None \
                and view.progress >= REVEAL_END + 0.3:  # after every validator has scored
            _, last = block_window(RecordKind.HOSTER_REVEAL, view.epoch_start(view.epoch), view.blocks_per_epoch)
            if store_reveal(self.dht, self.node_key, self.subnet_id, st.epoch, RecordKind.HOSTER_REVEAL,
                            self.reveal_body(st), block=last, ttl=record_ttl(view)):
                st.revealed_block = last


class CopycatDuty(HosterDuty):
    """Runs nothing: copies an honest hoster's commit, then its reveal."""

    victim: str = ""

    def tick(self, view):
        e, p = view.epoch, view.progress
        st = self.epochs.setdefault(e, HosterEpoch(e))
        if 0.3 <= p < 0.5 and st.committed_block is None:
            commits = fetch_records(self.dht, self.policy, e, RecordKind.HOSTER_COMMIT)
            if self.victim in commits:
                c = commits[self.victim].payload
                payload = {"commit": c["commit"], "blocks": c["blocks"], "parts": c["parts"]}
                if store_record(self.dht, self.node_key, self.subnet_id, e, RecordKind.HOSTER_COMMIT, payload,
                                block=view.block, ttl=record_ttl(view)):
                    st.committed_block = view.block
                    st.blocks = tuple(c["blocks"])
                    self.parts = c["parts"]
        if 0.54 <= p < 0.6 and st.committed_block is not None and st.revealed_block is None:
            bodies, _ = fetch_reveals(self.dht, self.policy, e, RecordKind.HOSTER_REVEAL, {self.victim: self.parts})
            if self.victim in bodies and store_reveal(self.dht, self.node_key, self.subnet_id, e,
                                                      RecordKind.HOSTER_REVEAL, bodies[self.victim],
                                                      block=view.block, ttl=record_ttl(view)):
                st.revealed_block = view.block


class ReplayDuty(HosterDuty):
    """Honest in one epoch; in the next it re-posts that epoch's signed records under the new keys."""

    replayed: set[int]

    def tick(self, view):
        if not hasattr(self, "replayed"):
            self.replayed = set()
        e, p = view.epoch, view.progress
        old = self.epochs.get(e - 1)
        if old is not None and old.revealed_block is not None and e - 1 not in self.replayed:
            if 0.2 <= p < 0.5 and not getattr(old, "commit_replayed", False):
                payload = {"subnet": self.subnet_id, "epoch": old.epoch, "block": old.committed_block,
                           "commit": old.commit.hex(), "blocks": list(old.blocks),
                           "parts": len(split_reveal(self.reveal_body(old)))}
                raw = seal(self.node_key, "hoster_commit", payload)  # byte-identical to last epoch's record
                store_sealed(self.dht, consensus_key(self.subnet_id, e, "hoster_commit"), self.node_key.peer_id, raw,
                             ttl=record_ttl(view))
                old.commit_replayed = True
            if 0.5 <= p < 0.6:
                chunks = split_reveal(self.reveal_body(old))
                for i, chunk in enumerate(chunks):
                    payload = {"subnet": self.subnet_id, "epoch": old.epoch, "block": old.revealed_block, "part": i,
                               "parts": len(chunks), "data": chunk}
                    store_sealed(self.dht, consensus_key(self.subnet_id, e, "hoster_reveal", i),
                                 self.node_key.peer_id, seal(self.node_key, "hoster_reveal", payload),
                                 ttl=record_ttl(view))
                self.replayed.add(e - 1)
                self.replay_epochs = getattr(self, "replay_epochs", set()) | {e}
            return
        super().tick(view)


@pytest.fixture(scope="module")
def network(tmp_path_factory, tiny_llama):
    from hoster.backend import Backend
    from subnet.model.blocks import load_blocks
    from subnet.swarm.dht import start_dht

    net = ChainNet(tmp_path_factory.mktemp("adv-chain"), block_time=BLOCK_TIME, epoch_length=EPOCH_LENGTH,
                   params={"churn_limit": 8})
    nodes: list[Node] = []
    duties: list[HosterDuty] = []
    attacker_dht = backend = None
    try:
        honest_ops = [net.add_operator() for _ in range(4)]
        net.activate()
        cheat_ops = {name: net.add_operator() for name in ("lazy", "mismatch", "late", "copycat", "replay")}
        outsider = NodeKey.generate()
        peers: list[str] = []
        for op in honest_ops:
            nodes.append(Node(net, op, peers))
            peers = peers or nodes[0].maddrs
        attacker_dht = start_dht(outsider, peers, check_if_identity_free=False)  # no record validator
        for node, rng in zip(nodes, RANGES):
            node.start_roles(model=tiny_llama, blocks=rng, validator_cls=PlannedLiarDuty)
        nodes[3].start_roles(validator_cls=PlannedLiarDuty)
        backend = Backend(load_blocks(tiny_llama, 0, 8, progress=False))
        classes = {"lazy": LazyDuty, "mismatch": MismatchDuty, "late": LateDuty, "copycat": CopycatDuty,
                   "replay": ReplayDuty}
        by_name = {}
        for name, op in cheat_ops.items():
            duty = classes[name](attacker_dht, op.chain, op.node_key, backend, net.subnet_id, hidden_size=64,
                                 num_blocks=8, served_blocks=lambda: (0, 8))
            if name == "copycat":
                duty.victim = nodes[2].peer_id
            by_name[name] = duty
        by_name["outsider"] = HosterDuty(attacker_dht, net.client(), outsider, backend, net.subnet_id,
                                         hidden_size=64, num_blocks=8, served_blocks=lambda: (0, 8))
        for duty in by_name.values():
            duties.append(duty.start())
        yield net, nodes, by_name, cheat_ops, outsider
    finally:
        for d in duties:
            d.stop()
        for n in nodes:
            n.stop()
        if backend is not None:
            backend.shutdown()
        if attacker_dht is not None:
            attacker_dht.shutdown()
        net.close()


def test_cheaters_score_zero_and_liar_is_slashed(network):
    net, nodes, duties, cheat_ops, outsider = network
    sid = net.subnet_id
    # wait until the cheaters left the queue (Idle: their hoster records are admitted)
    while True:
        info = net.epoch_info()
        classes = {op.node_id: net.owner.get_node(sid, op.node_id).node_class for op in cheat_ops.values()}
        if all(c >= NodeClass.IDLE for c in classes.values()):
            break
        net.wait_epoch(info.epoch + 1)
    first = net.epoch_info().epoch + 1  # first fully observed epoch
    scored = [first, first + 1]
    # Whoever is elected in a planned epoch lies (the proposal made in first + 3 carries the scores of
    # first + 2). Two planned epochs: with 8 s epochs the propose window is 1.2 s, and on a loaded machine
    # an elected validator stuck in a DHT timeout can miss it (no submission at all: stress-test).
    planned = [first + 3, first + 4]
    LiePlan.epochs = set(planned)
    net.wait_epoch(planned[-1] + 1, timeout=EPOCH_LENGTH * BLOCK_TIME * 12)
    net.wait_progress(0.3, 0.9, epoch=planned[-1] + 1)
    lies = [e for e in planned if net.owner.get_consensus_submission(sid, e) is not None]
    assert lies, f"no validator proposed in epochs {planned}"
    lie_epoch = lies[0]

    validators = [n.validator for n in nodes]
    honest_hosters = {n.peer_id for n in nodes if n.hoster is not None}
    peer = {name: op.peer_id for name, op in cheat_ops.items()}
    for e in scored:
        reports = [v.reports[e] for v in validators]
        assert all(r["scores"] == reports[0]["scores"] for r in reports), "honest validators disagree"
        rep = reports[0]
        status, scores = rep["hoster_reveals"], rep["hoster_scores"]
        for h in honest_hosters:
            assert status[h] == "valid" and scores[h] > 0.999, (h, status.get(h), scores.get(h))
        assert status[peer["lazy"]] == "valid" and scores[peer["lazy"]] == 0.0
        assert "does not match" in status[peer["mismatch"]] and scores[peer["mismatch"]] == 0.0
        assert status[peer["late"]] == "no reveal" and scores[peer["late"]] == 0.0
        assert "does not match" in status[peer["copycat"]] and scores[peer["copycat"]] == 0.0
        assert outsider.peer_id not in status  # never admitted
        if e in getattr(duties["replay"], "replay_epochs", set()):
            assert peer["replay"] not in status  # replayed records were rejected
        else:
            assert status[peer["replay"]] == "valid"
    assert set(scored) & getattr(duties["replay"], "replay_epochs", set()), "the replayer never replayed"
    # the late reveal did land in the DHT (backdated), but after the validators froze the reveals
    assert duties["late"].epochs[scored[0]].revealed_block is not None

    # honest proposals are accepted with every validator attesting
    for e in (first + 1, first + 2):
        r = net.owner.get_epoch_result(sid, e)
        assert r["outcome"] == "accepted" and r["attestors"] == r["validators"] == 4, r
    # the lying elected validator: not attested, no rewards, slashed
    r = net.owner.get_epoch_result(sid, lie_epoch)
    sub = net.owner.get_consensus_submission(sid, lie_epoch)
    liar_id = sub.validator_node_id
    assert r["outcome"] == "rejected" and r["attestors"] == 1, r
    kinds = {(x["node_id"], x["kind"]) for x in r["rewards"]}
    assert not any(k == "emission" or k == "validator" for _, k in kinds)
    slash = [int(x["amount"]) for x in r["rewards"] if x["kind"] == "slash"]
    assert slash and slash[0] < 0 and (liar_id, "slash") in kinds
    liar_peer = next(n.peer_id for n in nodes if n.op.node_id == liar_id)
    for v in validators:
        rep = v.reports[lie_epoch]
        if v.peer_id == liar_peer:
            assert rep["proposed_previous"]
        else:
            assert not rep["attested_previous"] and "differ" in rep["attestation"], rep["attestation"]
