"""Spot checks indistinguishable from traffic (docs/PROTOCOL.md, "Accountable serving").

Besides the seeded probe (which reaches hosters through their duty, so a cheater can tell it
apart), every validator sends each registered hoster of its model one ordinary inference
session per epoch: at a time, with tokens, drawn from the epoch randomness
(`consensus.spot_checks`), from a fresh client identity, through the same `rpc_inference`
that clients use (the runner is `subnet.client.spot_session.SpotCheckClient`, given by the
node: roles do not import each other). The validator embeds the tokens and runs blocks
`[0, start)` itself, so the hoster receives what a real client would send, then compares every
answer with its own reference. A wrong answer comes with the hoster's signed receipt: the
validator publishes it as evidence, and every validator's recomputation zeroes the hoster.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from chain.types import NodeClass
from consensus.evidence import EVIDENCE_TOLERANCE, Evidence, encode_evidence, relative_distance
from consensus.phases import REVEAL_START
from consensus.spot_checks import SpotCheckPlan, spot_check_plan
from keys.node_key import NodeKey
from subnet.logs import event
from subnet.swarm.announcements import read_announcements
from subnet.swarm.epoch_loop import EpochDutyLoop
from subnet.swarm.evidence_records import MAX_EVIDENCE_BYTES, EvidencePolicy, publish_evidence
from validator.weights import Embed, Reference, ValidatorWeights

log = logging.getLogger(__name__)

def local_embedding(model_path: str) -> Embed:
    """An embedding table of its own, loaded on first use (a node shares its `ValidatorWeights` instead)."""
    return ValidatorWeights(model_path, 0).embed()


@dataclass
class SpotEpoch:
    epoch: int
    plans: dict[str, tuple[int, int, SpotCheckPlan]] | None = None
    results: dict[str, str] = field(default_factory=dict)  # hoster -> "ok" | "lied" | "failed: ..."
    cpu_seconds: float = 0.0

    def report(self) -> dict:
        return {"epoch": self.epoch, "planned": sorted(self.plans or {}), "results": dict(self.results),
                "cpu_seconds": round(self.cpu_seconds, 4)}


class SpotCheckDuty(EpochDutyLoop):
    """Background loop: each epoch, one spot-check session per registered hoster at its drawn time."""

    name = "spot-check-duty"

    def __init__(self, dht, node_key: NodeKey, policy: EvidencePolicy, model_uid: str, vocab_size: int, runner,
                 reference: Reference, embed: Embed, *, poll_interval: float | None = None, keep_reports: int = 16):
        self.dht, self.node_key, self.policy, self.model_uid = dht, node_key, policy, model_uid
        self.vocab_size, self.runner, self.reference, self.embed = vocab_size, runner, reference, embed
        self.poll_interval, self.keep_reports = poll_interval, keep_reports
        self.epochs: dict[int, SpotEpoch] = {}
        self._init_loop()

    def tick(self, view) -> None:
        e, p = view.epoch, view.progress
        st = self.epochs.get(e)
        if st is None:
            st = self.epochs[e] = SpotEpoch(e)
            for old in sorted(self.epochs)[: -self.keep_reports]:
                del self.epochs[old]
        if st.plans is None:
            st.plans = self._plan(e)
            if st.plans is None:
                return
            rotate = getattr(self.runner, "rotate", None)
            if st.plans and rotate is not None:
                rotate()  # a fresh client identity every epoch
        for peer, (start, end, plan) in sorted(st.plans.items(), key=lambda kv: kv[1][2].at):
            if peer in st.results or p < plan.at:
                continue
            if p >= REVEAL_START:  # late (a loaded node): keep the reveal and score windows free for the duty
                st.results[peer] = "failed: too late in the epoch"
                continue
            t0 = time.thread_time()
            st.results[peer] = self.check_one(e, peer, start, end, plan)
            st.cpu_seconds += time.thread_time() - t0

    def _plan(self, epoch: int) -> dict[str, tuple[int, int, SpotCheckPlan]] | None:
        randomness = self.policy.registry.randomness(epoch)
        if randomness is None:
            return None
        plans = {}
        for ann in read_announcements(self.dht, self.model_uid):
            node = self.policy.registry.node(ann.peer_id)
            if ann.state != "online" or node is None or node.node_class < NodeClass.IDLE:
                continue
            plans[ann.peer_id] = (ann.start, ann.end, spot_check_plan(randomness, self.policy.subnet_id, epoch,
                                                                      ann.peer_id, self.vocab_size))
        return plans

    def check_one(self, epoch: int, peer: str, start: int, end: int, plan: SpotCheckPlan) -> str:
        """Run one spot-check session and compare; publish evidence when the hoster lied."""
        ids = torch.tensor([list(plan.prompt) + list(plan.decode)])
        x = self.embed(ids)
        if start > 0:
            x = self.reference(x, 0, start)
        cut = [0, len(plan.prompt)] + [len(plan.prompt) + i + 1 for i in range(len(plan.decode))]
        steps = [x[:, a:b].contiguous() for a, b in zip(cut, cut[1:])]
        try:
            answers = self.runner(peer, start, end, steps, ids.shape[1] + len(plan.decode))
        except Exception as err:
            event(log, "spot_check_failed", logging.INFO, hoster=peer[-8:], error=f"{type(err).__name__}: {err}"[:200])
            return f"failed: {type(err).__name__}"
        ref = self.reference(x, start, end)
        for (a, b), (out, receipt) in zip(zip(cut, cut[1:]), answers):
            distance = relative_distance(out, ref[:, a:b])
            if distance > EVIDENCE_TOLERANCE:
                event(log, "spot_check_caught", logging.WARNING, hoster=peer, epoch=epoch, position=a,
                      distance=round(distance, 6))
                self._publish(epoch, peer, receipt, x[:, :b].contiguous(), out)
                return "lied"
        event(log, "spot_check_passed", hoster=peer[-8:], epoch=epoch, steps=len(answers))
        return "ok"

    def _publish(self, epoch: int, peer: str, receipt, prefix: torch.Tensor, out: torch.Tensor) -> None:
        if receipt is None:
            event(log, "evidence_unavailable", hoster=peer[-8:], reason="no valid receipt")
            return
        body = encode_evidence(Evidence(receipt, prefix.to(out.dtype), out))
        if len(body) <= MAX_EVIDENCE_BYTES:
            publish_evidence(self.dht, self.node_key, self.policy.subnet_id, receipt.epoch, peer, body)

