"""Devnet chain parameters and the well-known dev accounts.

All rule constants live in one dataclass so tests can shrink epochs and queues; the
genesis values are persisted in the database, so a restart keeps the chain's rules.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

from chain.types import UNIT
from keys import AccountKey

DEV_ACCOUNT_COUNT = 10
DEFAULT_BLOCK_TIME = 1.0  # seconds between blocks
DEFAULT_EPOCH_LENGTH = 20  # blocks per epoch
# The narrowest phase of consensus/phases.py (REVEAL, [0.50, 0.60)) spans a tenth of an
# epoch; with 10 or more blocks every phase window holds at least one block. With fewer
# some lengths leave a window empty (5 blocks: no reveal block), and the epoch can never
# be scored.
MIN_EPOCH_LENGTH = 10


def check_timing(block_time: float, epoch_length: int) -> None:
    """Reject a block time or epoch length the protocol cannot run on (one-line ValueError)."""
    if not block_time > 0:
        raise ValueError(f"--block-time must be > 0 (got {block_time})")
    if epoch_length < MIN_EPOCH_LENGTH:
        raise ValueError(
            f"--epoch-length must be at least {MIN_EPOCH_LENGTH} blocks so every consensus phase"
            f" gets a block (got {epoch_length})"
        )


@dataclass(frozen=True)
class DevnetConfig:
    block_time: float = DEFAULT_BLOCK_TIME  # not part of the chain's identity
    epoch_length: int = DEFAULT_EPOCH_LENGTH  # unchecked here: rule tests use short epochs
    genesis_seed: str = "mesh-node devnet"
    dev_accounts: int = DEV_ACCOUNT_COUNT  # genesis-funded dev accounts
    dev_balance: int = 1_000_000 * UNIT
    subnet_registration_cost: int = 10 * UNIT  # burned by register_subnet
    node_registration_burn: int = 1 * UNIT  # burned by register_subnet_node (besides the stake)
    min_delegate_stake: int = 1 * UNIT  # a subnet with less delegate stake earns no node emissions
    min_subnet_nodes: int = 1  # nodes required to activate a subnet
    min_stake_floor: int = 100 * UNIT  # a subnet's min stake must be >= this
    node_emission: int = 100 * UNIT  # per subnet epoch, split by score among Validator-class nodes
    validator_base_reward: int = 1 * UNIT  # paid to the proposer of accepted data
    attestation_threshold_pct: int = 66  # accepted iff attestors * 100 >= pct * snapshot validators
    slash_bps_x1000: int = 3125  # 3.125% as parts per 100000
    max_slash: int = 1 * UNIT
    reputation_start: float = 1.0
    reputation_penalty: float = 0.25
    reputation_gain: float = 0.05
    min_reputation: float = 0.1  # below it a node is removed
    queue_epochs: int = 1  # epochs a node registered after activation waits in the queue
    churn_limit: int = 4  # queued nodes activated per epoch boundary
    idle_epochs: int = 2  # accepted epochs an Idle node needs to become Included
    included_epochs: int = 2  # consecutive accepted epochs with full reputation -> Validator
    unbonding_epochs: int = 2
    max_data_entries: int = 1024  # bound on a proposal's size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DevnetConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def dev_accounts(n: int = DEV_ACCOUNT_COUNT) -> list[AccountKey]:
    """Deterministic dev account keys (public knowledge: for local devnets only)."""
    return [
        AccountKey.from_private_key(hashlib.sha256(f"mesh-node devnet account {i}".encode()).digest())
        for i in range(n)
    ]
