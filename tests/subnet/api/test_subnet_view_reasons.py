"""A chain that keeps no reputation reasons (Hypertensor): the view reports the changes it
observes with reason "unknown", and roles come from the chain class and announcements."""

from __future__ import annotations

from chain.types import EpochInfo, NodeClass, SubnetNode
from subnet.api.subnet_view import ChainSubnetView, role_of


class ReasonlessChain:
    """Only the `chain.base.Chain` reads the view uses; no devnet `get_epoch_result`."""

    def __init__(self):
        self.epoch, self.reputation = 5, 1.0

    def get_epoch_info(self, subnet_id=None):
        return EpochInfo(self.epoch, self.epoch * 10, 10, 0.5, 1.0, 1.0)

    def get_subnet_nodes(self, subnet_id):
        return [SubnetNode(subnet_id, 1, "c", "h", "peer-1", NodeClass.INCLUDED, 100, self.reputation)]

    def get_consensus_submission(self, subnet_id, epoch):
        return None


def test_unknown_reason_where_the_chain_keeps_none():
    chain = ReasonlessChain()
    view = ChainSubnetView(chain, 1, cache_seconds=0)
    (n,) = view.nodes()
    assert n.reputation_change is None and n.role == "none" and n.state == "offline" and n.last_seen is None
    chain.epoch, chain.reputation = 6, 0.75
    (n,) = view.nodes()
    assert n.reputation_change == {"node_id": 1, "epoch": 6, "before": 1.0, "after": 0.75, "reason": "unknown",
                                   "detail": "the chain reports no reason"}
    assert [c.reason for c in view.reputation_changes()] == ["unknown"]
    assert view.rewards() == []


def test_roles():
    assert role_of(NodeClass.VALIDATOR, True) == "both"
    assert role_of(NodeClass.VALIDATOR, False) == "validator"
    assert role_of(NodeClass.INCLUDED, True) == "hoster"
    assert role_of(NodeClass.IDLE, False) == "none"
