"""The one chain interface every node role talks to.

Backends: `chain.devnet.client.DevnetChain` (embedded local chain over HTTP) and
`chain.hypertensor.client.HypertensorChain` (substrate-interface). Signing keys are held
by the backend instance (coldkey for registration/stake, hotkey for proposals and
attestations), so callers pass only protocol values.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

from chain.types import ConsensusSubmission, EpochInfo, Receipt, ScoreEntry, SubnetInfo, SubnetNode, error_for

COST_MARGIN_PCT = 10  # default caps: the cost read from the chain plus this much (it may rise before inclusion)


def default_cap(cost: int) -> int:
    """The cap sent with a registration when the user gives none: the current cost plus a margin."""
    return cost + -(-cost * COST_MARGIN_PCT // 100)


class Chain(abc.ABC):
    # ---- reads -------------------------------------------------------------
    @abc.abstractmethod
    def get_block(self) -> int: ...

    @abc.abstractmethod
    def get_epoch_info(self, subnet_id: int | None = None) -> EpochInfo:
        """Epoch and progress from chain blocks (subnet epochs may count from the subnet's slot)."""

    @abc.abstractmethod
    def get_epoch_randomness(self, subnet_id: int, epoch: int) -> bytes:
        """32 bytes fixed once epoch `epoch` starts; identical for every reader."""

    @abc.abstractmethod
    def get_subnet(self, subnet_id: int) -> SubnetInfo: ...

    @abc.abstractmethod
    def get_subnet_nodes(self, subnet_id: int) -> list[SubnetNode]: ...

    @abc.abstractmethod
    def get_node_by_peer_id(self, subnet_id: int, peer_id: str) -> SubnetNode | None: ...

    @abc.abstractmethod
    def get_node_by_hotkey(self, subnet_id: int, hotkey: str) -> SubnetNode | None: ...

    @abc.abstractmethod
    def get_elected_validator(self, subnet_id: int, epoch: int) -> int | None:
        """Subnet node id elected for (subnet, epoch), or None if not elected yet."""

    @abc.abstractmethod
    def get_consensus_submission(self, subnet_id: int, epoch: int) -> ConsensusSubmission | None: ...

    def get_bootnodes(self, subnet_id: int) -> list[str]:
        """The subnet's bootnode multiaddrs as stored (text, or a binary multiaddr in hex where the
        chain stores bytes); [] where the backend keeps none (the devnet: its nodes' multiaddrs are
        the bootstrap list). Callers parse and skip bad entries (subnet.swarm.discovery)."""
        return []

    @abc.abstractmethod
    def get_balance(self, account: str) -> int: ...

    @abc.abstractmethod
    def get_stake(self, subnet_id: int, hotkey: str) -> int: ...

    # ---- writes (signed by the key the backend holds) ----------------------
    @abc.abstractmethod
    def register_subnet(
        self,
        name: str,
        *,
        min_stake: int,
        max_stake: int,
        initial_coldkeys: Sequence[str] = (),
        repo: str = "",
        description: str = "",
    ) -> int:
        """Register a subnet owned by this account; returns the subnet id."""

    @abc.abstractmethod
    def activate_subnet(self, subnet_id: int) -> Receipt: ...

    @abc.abstractmethod
    def register_subnet_node(
        self, subnet_id: int, *, hotkey: str, peer_id: str, stake: int, multiaddr: str = ""
    ) -> int:
        """Signed by the coldkey; returns the new subnet node id."""

    @abc.abstractmethod
    def remove_subnet_node(self, subnet_id: int, node_id: int) -> Receipt: ...

    @abc.abstractmethod
    def update_peer_info(self, subnet_id: int, node_id: int, *, peer_id: str, multiaddr: str = "") -> Receipt: ...

    @abc.abstractmethod
    def add_stake(self, subnet_id: int, node_id: int, *, hotkey: str, amount: int) -> Receipt: ...

    @abc.abstractmethod
    def remove_stake(self, subnet_id: int, *, hotkey: str, amount: int) -> Receipt:
        """Starts unbonding; funds return to the coldkey after the unbonding period."""

    @abc.abstractmethod
    def propose_attestation(self, subnet_id: int, data: Sequence[ScoreEntry]) -> Receipt:
        """Signed by the hotkey; only the elected validator, once per epoch."""

    @abc.abstractmethod
    def attest(self, subnet_id: int) -> Receipt:
        """Signed by the hotkey; Validator-class nodes of the epoch snapshot, once."""

    # ---- costs and delegate stake (optional: both backends implement them) --------
    def registration_cost(self) -> int | None:
        """What registering a subnet burns now (None if this chain cannot say)."""
        return None

    def node_registration_burn(self, subnet_id: int) -> int | None:
        """What registering a node in `subnet_id` burns now, besides its stake (None if unknown)."""
        return None

    def get_delegate_stake(self, subnet_id: int, account: str) -> int:
        """`account`'s delegate stake in the subnet, in balance units."""
        raise error_for("Unsupported", f"{type(self).__name__} has no delegate stake")

    def get_subnet_delegate_stake(self, subnet_id: int) -> int:
        """The subnet's total delegate stake (Hypertensor pays node emissions only when it is > 0)."""
        raise error_for("Unsupported", f"{type(self).__name__} has no delegate stake")

    def add_delegate_stake(self, subnet_id: int, amount: int) -> Receipt:
        """Signed by the coldkey: back the subnet with `amount`."""
        raise error_for("Unsupported", f"{type(self).__name__} has no delegate stake")

    def remove_delegate_stake(self, subnet_id: int, amount: int) -> Receipt:
        """Signed by the coldkey: withdraw `amount` of delegate stake (unbonds like node stake)."""
        raise error_for("Unsupported", f"{type(self).__name__} has no delegate stake")

    def claim_unbondings(self) -> Receipt:
        """Signed by the coldkey: move stake whose unbonding period ended back to the balance."""
        raise error_for("Unsupported", f"{type(self).__name__} cannot claim unbondings")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self) -> Chain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
