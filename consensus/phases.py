"""Epoch phases from chain progress: the single table every node uses.

Progress `p` in [0, 1) comes from chain blocks (`EpochInfo.progress`), never from the
local clock alone. All window checks in the project go through `in_window` so a record
accepted by one node is accepted by every node that sees the same chain block.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Phase(enum.Enum):
    """What the protocol expects in each part of an epoch."""

    PROPOSE = "propose"  # [0, 0.15): propose/attest e-1, post the probe of e
    COMMIT = "commit"  # [0.15, 0.50): hosters run the probe and commit
    REVEAL = "reveal"  # [0.50, 0.60): hosters reveal; validators reveal their e-1 score commit
    SCORE = "score"  # [0.60, 1.0): score e; validators commit their score set of e


PROPOSE_END = 0.15
PROBE_ELECTED_ONLY_END = 0.10  # before this only the elected validator may post the probe
COMMIT_START = 0.15
COMMIT_END = 0.50
REVEAL_START = 0.50
REVEAL_END = 0.60
SCORE_START = 0.60

_PHASES: tuple[tuple[float, float, Phase], ...] = (
    (0.0, PROPOSE_END, Phase.PROPOSE),
    (COMMIT_START, COMMIT_END, Phase.COMMIT),
    (REVEAL_START, REVEAL_END, Phase.REVEAL),
    (SCORE_START, 1.0, Phase.SCORE),
)


class RecordKind(str, enum.Enum):
    """Consensus record kinds written to the DHT (one window each)."""

    PROBE = "probe"
    HOSTER_COMMIT = "hoster_commit"
    HOSTER_REVEAL = "hoster_reveal"
    VALIDATOR_COMMIT = "validator_commit"
    VALIDATOR_REVEAL = "validator_reveal"
    REFERENCE_COMMIT = "reference_commit"  # a validator holding the weights: its own outputs of the probe
    REFERENCE_REVEAL = "reference_reveal"


@dataclass(frozen=True)
class Window:
    """Half-open progress interval [start, end)."""

    start: float
    end: float

    def contains(self, progress: float, grace: float = 0.0) -> bool:
        return self.start - grace <= progress < self.end + grace


WINDOWS: dict[str, Window] = {
    RecordKind.PROBE.value: Window(0.0, PROPOSE_END),
    RecordKind.HOSTER_COMMIT.value: Window(COMMIT_START, COMMIT_END),
    RecordKind.HOSTER_REVEAL.value: Window(REVEAL_START, REVEAL_END),
    RecordKind.VALIDATOR_REVEAL.value: Window(REVEAL_START, REVEAL_END),
    RecordKind.VALIDATOR_COMMIT.value: Window(SCORE_START, 1.0),
    RecordKind.REFERENCE_COMMIT.value: Window(COMMIT_START, COMMIT_END),  # committed before any output is revealed
    RecordKind.REFERENCE_REVEAL.value: Window(REVEAL_START, REVEAL_END),
    # chain actions (not DHT records), same table
    "propose": Window(0.0, PROPOSE_END),
    "score": Window(SCORE_START, 1.0),
}


def _check_progress(progress: float) -> float:
    p = float(progress)
    if not (0.0 <= p < 1.0):
        raise ValueError(f"epoch progress must be in [0, 1), got {progress!r}")
    return p


def phase_of(progress: float) -> Phase:
    """The phase an epoch is in at progress `p`."""
    p = _check_progress(progress)
    for start, end, phase in _PHASES:
        if start <= p < end:
            return phase
    raise AssertionError("unreachable: phases cover [0, 1)")


def window(kind: str | RecordKind) -> Window:
    key = kind.value if isinstance(kind, RecordKind) else kind
    try:
        return WINDOWS[key]
    except KeyError:
        raise ValueError(f"unknown window kind {kind!r}") from None


def in_window(kind: str | RecordKind, progress: float, *, grace: float = 0.0, elected: bool = True) -> bool:
    """May a record/action of `kind` happen at `progress`?

    Probes: the elected validator may post from p=0; any other validator-class node only
    from p=0.10 (the probe is the same by construction, this only avoids spam). `grace`
    widens the window on both sides to absorb one block of skew between nodes.
    """
    p = _check_progress(progress)
    w = window(kind)
    key = kind.value if isinstance(kind, RecordKind) else kind
    if key == RecordKind.PROBE.value and not elected:
        w = Window(PROBE_ELECTED_ONLY_END, w.end)
    return w.contains(p, grace)


def block_window(kind: str | RecordKind, epoch_start_block: int, blocks_per_epoch: int) -> tuple[int, int]:
    """The same window in chain blocks: [first, last] block numbers (inclusive) of `kind`.

    Used to check the block a record claims it was written at; a block b is in the window
    iff its progress (b - start) / blocks_per_epoch is.
    """
    if blocks_per_epoch <= 0:
        raise ValueError("blocks_per_epoch must be positive")
    w = window(kind)
    first = epoch_start_block + ceil_fraction(w.start, blocks_per_epoch)
    last = epoch_start_block + ceil_fraction(w.end, blocks_per_epoch) - 1
    return first, last


def ceil_fraction(fraction: float, n: int) -> int:
    """Smallest integer k with k / n >= fraction (exact for the decimal table values):
    the first block of an epoch of `n` blocks at or past progress `fraction`."""
    from fractions import Fraction

    f = Fraction(str(fraction)) * n
    return -((-f.numerator) // f.denominator)
