"""Should this validator attest the on-chain proposal?

The chain canonicalises a proposal (drops nodes below Included, collapses duplicate node
ids to the lowest score, sorts by id). A validator applies the same canonicalisation to
its own set and attests iff the two agree, except for nodes that joined, left or changed
class at the epoch boundary: two honest validators may have read the node list on either
side of that boundary, so such entries are tolerated (present or absent, any score).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


def canonicalize(entries: Iterable[tuple[int, int]], eligible: Iterable[int] | None = None) -> list[tuple[int, int]]:
    """The chain's canonical form: only `eligible` node ids (if given), duplicates -> lowest, sorted."""
    allowed = None if eligible is None else set(eligible)
    best: dict[int, int] = {}
    for nid, score in entries:
        nid, score = int(nid), int(score)
        if allowed is not None and nid not in allowed:
            continue
        best[nid] = min(score, best.get(nid, score))
    return sorted(best.items())


@dataclass(frozen=True)
class AttestationDecision:
    attest: bool
    mismatches: tuple[tuple[int, int | None, int | None], ...] = ()  # (node id, on-chain, own)
    tolerated: tuple[int, ...] = field(default=())

    @property
    def reason(self) -> str:
        if self.attest:
            return "equal" if not self.tolerated else f"equal except boundary nodes {list(self.tolerated)}"
        return f"{len(self.mismatches)} entries differ: {list(self.mismatches)[:5]}"


def compare(
    onchain: Sequence[tuple[int, int]],
    own: Sequence[tuple[int, int]],
    *,
    eligible: Iterable[int] | None = None,
    boundary_nodes: Iterable[int] = (),
) -> AttestationDecision:
    """Compare the on-chain data (already canonical) with our own set.

    `eligible`: node ids the chain would keep (Included+), applied to our set like the chain
    does. `boundary_nodes`: node ids whose membership/class changed at the epoch boundary.
    """
    chain_map = dict(canonicalize(onchain))
    own_map = dict(canonicalize(own, eligible))
    boundary = set(boundary_nodes)
    mismatches = []
    tolerated = []
    for nid in sorted(set(chain_map) | set(own_map)):
        a, b = chain_map.get(nid), own_map.get(nid)
        if a == b:
            continue
        if nid in boundary:
            tolerated.append(nid)
        else:
            mismatches.append((nid, a, b))
    if not chain_map and own_map:
        # an empty proposal never equals a non-empty set (a lazy proposer must not be attested)
        return AttestationDecision(False, tuple(mismatches) or ((0, None, None),), tuple(tolerated))
    return AttestationDecision(not mismatches, tuple(mismatches), tuple(tolerated))


def boundary_changes(before: dict[int, int], after: dict[int, int]) -> set[int]:
    """Node ids that joined, left, or changed class between two {node id: class} snapshots."""
    return {n for n in set(before) | set(after) if before.get(n) != after.get(n)}
