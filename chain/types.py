"""Typed values exchanged with a chain backend.

Both backends (devnet, hypertensor) return exactly these types so node code never
depends on which chain it talks to. Amounts are integers in the smallest unit
(18 decimals, like TENSOR on Hypertensor).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

DECIMALS = 18
UNIT = 10**DECIMALS  # 1 TENSOR in smallest units
SCORE_SCALE = 10**18  # on-chain scores are floor(score * 1e18)


def tensor(amount: float | int) -> int:
    """Whole/fractional TENSOR -> smallest units (exact for ints)."""
    if isinstance(amount, int):
        return amount * UNIT
    return int(round(amount * UNIT))


class NodeClass(enum.IntEnum):
    """Subnet node classes, ordered as on Hypertensor (higher means more rights)."""

    DEACTIVATED = 0
    REGISTERED = 1  # waiting in the activation queue
    IDLE = 2
    INCLUDED = 3
    VALIDATOR = 4


class SubnetState(enum.Enum):
    REGISTERED = "Registered"
    ACTIVE = "Active"
    PAUSED = "Paused"


@dataclass(frozen=True)
class EpochInfo:
    epoch: int
    block: int
    blocks_per_epoch: int
    progress: float  # in [0, 1), from chain blocks only
    seconds_left: float
    block_time: float

    @property
    def block_in_epoch(self) -> int:
        return int(round(self.progress * self.blocks_per_epoch))


@dataclass(frozen=True)
class SubnetInfo:
    subnet_id: int
    name: str
    owner: str
    state: SubnetState
    min_stake: int
    max_stake: int
    registered_block: int
    activated_block: int | None = None
    repo: str = ""
    description: str = ""


@dataclass(frozen=True)
class SubnetNode:
    subnet_id: int
    node_id: int
    coldkey: str
    hotkey: str
    peer_id: str
    node_class: NodeClass
    stake: int
    reputation: float  # in [0, 1]
    registered_epoch: int = 0
    classified_epoch: int = 0
    multiaddr: str = ""


UNKNOWN_REASON = "unknown"


@dataclass(frozen=True)
class ReputationChange:
    """A node's reputation moved, and the chain's rule for it.

    The devnet chain records one per node and settled epoch (its reason codes: scored,
    missing_from_scores, no_proposal, proposal_rejected, attested_rejected); where a chain
    keeps no reason (Hypertensor) a change is only observed, with reason "unknown"."""

    node_id: int
    epoch: int | None
    before: float
    after: float
    reason: str = UNKNOWN_REASON
    detail: str = ""


@dataclass(frozen=True)
class ScoreEntry:
    node_id: int
    score: int  # floor(score * 1e18)


@dataclass(frozen=True)
class ConsensusSubmission:
    subnet_id: int
    epoch: int
    validator_node_id: int
    data: tuple[ScoreEntry, ...]  # canonicalised by the chain: sorted by node id
    attestations: dict[int, int] = field(default_factory=dict)  # node_id -> block attested
    block: int = 0


@dataclass(frozen=True)
class Receipt:
    """Result of a state-changing call."""

    ok: bool
    block: int
    detail: dict = field(default_factory=dict)


class ChainError(Exception):
    """A chain call failed; `reason` is the chain's own short reason code."""

    def __init__(self, reason: str, message: str = ""):
        self.reason = reason
        super().__init__(f"{reason}: {message}" if message else reason)


class NotElectedError(ChainError): ...


class AlreadyProposedError(ChainError): ...


class AlreadyAttestedError(ChainError): ...


class InsufficientStakeError(ChainError): ...


class InsufficientBalanceError(ChainError): ...


class UnknownNodeError(ChainError): ...


class UnknownSubnetError(ChainError): ...


class AuthError(ChainError):
    """Bad signature, reused nonce, or acting for another account."""


class InvalidRequestError(ChainError): ...


class ChainUnavailableError(ChainError):
    """Transient transport failure (connection refused, websocket dropped)."""


class NotValidatorError(ChainError):
    """The signer's node is not in the epoch's Validator-class snapshot."""


class NoSubmissionError(ChainError):
    """Nothing to attest: the epoch has no proposal yet."""


ERRORS_BY_REASON: dict[str, type[ChainError]] = {
    "NotElected": NotElectedError,
    "AlreadyProposed": AlreadyProposedError,
    "AlreadyAttested": AlreadyAttestedError,
    "InsufficientStake": InsufficientStakeError,
    "StakeOutOfRange": InsufficientStakeError,
    "InsufficientBalance": InsufficientBalanceError,
    "UnknownNode": UnknownNodeError,
    "UnknownSubnet": UnknownSubnetError,
    "BadSignature": AuthError,
    "NonceReused": AuthError,
    "WrongSigner": AuthError,
    "InvalidRequest": InvalidRequestError,
    "Unavailable": ChainUnavailableError,
    "WrongChain": AuthError,
    "NotValidator": NotValidatorError,
    "NoSubmission": NoSubmissionError,
    "PeerIdTaken": InvalidRequestError,
    "HotkeyTaken": InvalidRequestError,
    "HotkeyIsColdkey": InvalidRequestError,
    "InvalidPeerId": InvalidRequestError,
    "UnknownCall": InvalidRequestError,
}


def error_for(reason: str, message: str = "") -> ChainError:
    """Build the typed error for a chain reason code (unknown codes -> ChainError)."""
    return ERRORS_BY_REASON.get(reason, ChainError)(reason, message)
