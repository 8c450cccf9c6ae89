"""Deterministic scoring: hosters by relative L2 distance to the block mean, validators
by the distance of their revealed score vectors, combined into on-chain integers.

Every node must derive the same integers from the same records, so:

- inputs are sorted by peer id before any arithmetic;
- reductions over tensors use a fixed pairwise order built from elementwise numpy ops
  (`_tree_sum`): each IEEE add/mul/sqrt/div is correctly rounded, so the result does not
  depend on SIMD width, BLAS or thread count (`np.linalg.norm`/`np.sum` may);
- reductions over Python floats use `math.fsum` (exactly rounded, order independent);
- floats become integers in exactly one place, `to_fixed`, and everything after that is
  exact rational/integer arithmetic.

Hoster rules (per probe block `i`):

- the block's hosters are those with a valid reveal containing `i`; an output that is
  non-finite or of the wrong shape scores 0 for that block;
- reference: with `tolerance=None` it is the plain mean of all valid outputs (the rule in
  ARCHITECTURE.md). With a tolerance (the default) the mean is taken over the outputs that
  agree with the coordinate-wise median within `tolerance` (relative L2), and an output
  farther than `tolerance` from that mean scores 0. Honest hosters run the same code path
  in the same dtype and agree to ~1e-6, so this costs them nothing, while a lazy (random)
  output can no longer drag the mean and still collect ~40% of an honest score;
- `d = ||out - mean|| / (||mean|| + eps)`, `s = 1 / (1 + d)`;
- **single-hoster rule**: a block with only one valid output cannot be compared; it is
  left out of that hoster's mean (it neither helps nor hurts). A hoster none of whose
  blocks could be compared scores `uncompared_score` (default 0: unverifiable work is not
  paid, otherwise a cheater would simply pick an unpopular block range);
- a hoster's score is the mean (fsum) of its compared blocks' scores; a hoster without a
  valid reveal (missing, late, not matching its commit) scores 0.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

SCORE_SCALE = 10**18
SCORING_THREADS = min(os.cpu_count() or 1, 4)  # blocks scored in parallel (bit-identical, see score_hosters)


@dataclass(frozen=True)
class ScoringParams:
    eps: float = 1e-8
    tolerance: float | None = 0.05
    uncompared_score: float = 0.0
    hoster_weight: Fraction = Fraction(2, 5)
    validator_weight: Fraction = Fraction(3, 5)


DEFAULT_PARAMS = ScoringParams()


def to_fixed(score: float) -> int:
    """The one float -> integer conversion: floor(score * 1e18), clamped to [0, 1e18].

    Exact: the float is converted to a rational first, so no rounding of `score * 1e18`.
    Non-finite scores map to 0.
    """
    if not math.isfinite(score) or score <= 0.0:
        return 0
    if score >= 1.0:
        return SCORE_SCALE
    return int(Fraction(score) * SCORE_SCALE)  # int() of a positive Fraction is floor


# ---- deterministic tensor reductions ---------------------------------------------


def _tree_sum(a: np.ndarray, axis: int) -> np.ndarray:
    """Sum along `axis` in a fixed pairwise order, in place on one float64 working copy.

    Each round adds element `i + half` onto element `i` (half = n // 2) and, when n is odd,
    moves the last element to position `half`; the pairing (hence every rounding) is fixed
    by the length alone, whatever the memory layout, SIMD width or thread count.
    """
    buf = np.array(a, dtype=np.float64, copy=True)
    return _tree_sum_inplace(buf, axis)


def _tree_sum_inplace(buf: np.ndarray, axis: int) -> np.ndarray:
    """`_tree_sum` that may overwrite `buf` (a float64 array the caller owns)."""
    axis = axis % buf.ndim
    buf = np.moveaxis(buf, axis, 0)  # a view: the rounds below index the first axis
    n = buf.shape[0]
    if n == 0:
        return np.zeros(buf.shape[1:], dtype=np.float64)
    while n > 1:
        half = n // 2
        np.add(buf[:half], buf[half:2 * half], out=buf[:half])
        if n % 2:
            buf[half] = buf[n - 1]
        n = half + n % 2
    return buf[0].copy()


def _norms(rows: np.ndarray) -> np.ndarray:
    """L2 norm of each row of a 2-D float64 array, deterministic."""
    return np.sqrt(_tree_sum_inplace(np.multiply(rows, rows), axis=1))


def _rel_dist(rows: np.ndarray, ref: np.ndarray, eps: float) -> np.ndarray:
    ref_norm = float(np.sqrt(_tree_sum_inplace(np.multiply(ref, ref), axis=0)))
    diff = np.subtract(rows, ref[None, :])
    np.multiply(diff, diff, out=diff)
    return np.sqrt(_tree_sum_inplace(diff, axis=1)) / (ref_norm + eps)


# ---- hosters --------------------------------------------------------------------


@dataclass
class HosterScoring:
    """Hoster scores plus the per-block detail a report shows."""

    scores: dict[str, float]
    block_scores: dict[int, dict[str, float]] = field(default_factory=dict)
    uncompared: dict[int, str] = field(default_factory=dict)

    def fixed(self) -> dict[str, int]:
        return {p: to_fixed(s) for p, s in sorted(self.scores.items())}


def _as_array(x) -> np.ndarray:
    """A numpy view of an output without changing its values (float16/32/64 stay as they are)."""
    if hasattr(x, "detach"):  # torch tensor
        import torch

        t = x.detach().to("cpu")
        if t.dtype not in (torch.float16, torch.float32, torch.float64):
            t = t.to(torch.float64)  # bfloat16 etc.: exact widening
        return t.numpy()
    return np.asarray(x)


def _median_rows(rows: np.ndarray) -> np.ndarray:
    """Coordinate-wise float64 median over rows (exact, like np.median, ~2x faster: one partition).

    `rows` may be in its original (narrower) float dtype: order statistics do not change under
    exact widening, and the even-count average is taken in float64, so the result is bit-identical
    to the median of the widened rows while partitioning half the bytes.
    """
    n = rows.shape[0]
    k = n // 2
    cols = np.ascontiguousarray(rows.T)  # partitioning contiguous rows is ~2x faster than strided
    if n % 2:
        return np.partition(cols, k, axis=1)[:, k].astype(np.float64)
    part = np.partition(cols, (k - 1, k), axis=1)
    return (part[:, k - 1].astype(np.float64) + part[:, k].astype(np.float64)) / 2


def score_block(
    peers: list[str], rows: np.ndarray, params: ScoringParams = DEFAULT_PARAMS, raw: np.ndarray | None = None
) -> dict[str, float]:
    """Scores of the (finite, same-shape) outputs of one block, `peers` sorted, len >= 2.

    `rows` is float64; `raw` optionally the same values in their original dtype (for a cheaper median).
    """
    n = len(peers)
    mean = _tree_sum(rows, axis=0) / float(n)
    d = _rel_dist(rows, mean, params.eps)
    if params.tolerance is not None and not bool((d <= params.tolerance).all()):
        # someone disagrees: re-centre on the outputs that agree with the coordinate-wise median
        med = _median_rows(rows if raw is None else raw)
        members = _rel_dist(rows, med, params.eps) <= params.tolerance
        if not members.any():
            return {p: 0.0 for p in peers}
        mean = _tree_sum_inplace(rows[members], axis=0) / float(int(members.sum()))
        d = _rel_dist(rows, mean, params.eps)
    out: dict[str, float] = {}
    for p, dk in zip(peers, d.tolist()):
        if not math.isfinite(dk) or (params.tolerance is not None and dk > params.tolerance):
            out[p] = 0.0
        else:
            out[p] = 1.0 / (1.0 + dk)
    return out


def _score_block_entries(entries: list[tuple[str, np.ndarray]],
                         params: ScoringParams) -> tuple[dict[str, float], str | None]:
    """One block's scores from its (peer, output) entries, and its lone peer if it had only one.

    Entries of a minority shape or with non-finite values score 0; the rest go to `score_block`.
    """
    scored: dict[str, float] = {}
    if len({a.shape for _, a in entries}) != 1:  # only without expected_shape
        shape_counts: dict[tuple, int] = {}
        for _, a in entries:
            shape_counts[a.shape] = shape_counts.get(a.shape, 0) + 1
        best = min(shape_counts, key=lambda s: (-shape_counts[s], s))
        for p, a in entries:
            if a.shape != best:
                scored[p] = 0.0
        entries = [(p, a) for p, a in entries if a.shape == best]
    # one widening to float64 per block (exact for float16/32), then drop non-finite rows
    raw = np.stack([a.reshape(-1) for _, a in entries])
    if raw.dtype.kind != "f":
        raw = raw.astype(np.float64)
    rows = raw.astype(np.float64)
    finite = np.isfinite(rows).all(axis=1)
    if not finite.all():
        for (p, _), ok in zip(entries, finite.tolist()):
            if not ok:
                scored[p] = 0.0
        rows, raw = rows[finite], raw[finite]
        entries = [e for e, ok in zip(entries, finite.tolist()) if ok]
    if len(entries) < 2:
        return scored, (entries[0][0] if entries else None)
    scored.update(score_block([p for p, _ in entries], rows, params, raw))
    return scored, None


def score_hosters(
    outputs: Mapping[str, Mapping[int, object]],
    participants: Iterable[str] = (),
    *,
    expected_shape: tuple[int, ...] | None = None,
    params: ScoringParams = DEFAULT_PARAMS,
    threads: int | None = None,
) -> HosterScoring:
    """Score hosters from their verified block outputs.

    `outputs`: peer id -> {block index -> tensor/array} for hosters whose reveal matched
    their commit. `participants`: every hoster that should appear in the result (e.g. all
    committers); those without outputs score 0.
    """
    by_block: dict[int, list[tuple[str, np.ndarray]]] = {}
    block_scores: dict[int, dict[str, float]] = {}
    for peer in sorted(outputs):
        for block, x in sorted(outputs[peer].items()):
            arr = _as_array(x)
            if expected_shape is not None and arr.shape != tuple(expected_shape):
                block_scores.setdefault(block, {})[peer] = 0.0
                continue
            by_block.setdefault(block, []).append((peer, arr))

    uncompared: dict[int, str] = {}
    blocks = sorted(by_block)
    # Blocks are independent and each is computed by the same sequence of correctly rounded
    # numpy ops, so scoring them on several threads (numpy releases the GIL) changes no bit.
    workers = min(len(blocks), SCORING_THREADS if threads is None else max(1, threads))
    if workers > 1:
        with ThreadPoolExecutor(workers, thread_name_prefix="scoring") as pool:
            results = list(pool.map(lambda b: _score_block_entries(by_block[b], params), blocks))
    else:
        results = [_score_block_entries(by_block[b], params) for b in blocks]
    for block, (scored, lone) in zip(blocks, results):
        if scored:
            block_scores.setdefault(block, {}).update(scored)
        if lone is not None:
            uncompared[block] = lone

    per_peer: dict[str, list[float]] = {}
    for block in sorted(block_scores):
        for peer, s in block_scores[block].items():
            per_peer.setdefault(peer, []).append(s)
    scores: dict[str, float] = {}
    for peer in sorted(set(participants) | set(outputs)):
        vals = per_peer.get(peer)
        if vals:
            scores[peer] = math.fsum(vals) / len(vals)
        elif outputs.get(peer):  # every block it revealed was the only valid output of that block
            scores[peer] = params.uncompared_score
        else:
            scores[peer] = 0.0
    return HosterScoring(scores, {b: dict(sorted(v.items())) for b, v in sorted(block_scores.items())}, uncompared)


# ---- validators -----------------------------------------------------------------


def score_validators(
    revealed: Mapping[str, Mapping[str, int]],
    participants: Iterable[str] = (),
    *,
    params: ScoringParams = DEFAULT_PARAMS,
) -> dict[str, float]:
    """Validator scores: 1 / (1 + d), d = relative L2 distance of the revealed (fixed-point)
    score vector to the mean of all revealed vectors; no valid reveal scores 0.

    Vectors are indexed by the union of peer ids (missing entries are 0). Exactly rounded
    (fsum) arithmetic over Python floats, so the result is order independent.
    """
    signers = sorted(revealed)
    result = {p: 0.0 for p in sorted(set(participants))}
    if not signers:
        return result
    keys = sorted({k for s in signers for k in revealed[s]})
    vecs = {s: [revealed[s].get(k, 0) / SCORE_SCALE for k in keys] for s in signers}
    m = len(signers)
    mean = [math.fsum(vecs[s][j] for s in signers) / m for j in range(len(keys))]
    mean_norm = math.sqrt(math.fsum(v * v for v in mean))
    for s in signers:
        dist = math.sqrt(math.fsum((a - b) * (a - b) for a, b in zip(vecs[s], mean)))
        d = dist / (mean_norm + params.eps)
        result[s] = 1.0 / (1.0 + d)
    return result


# ---- on-chain integers ----------------------------------------------------------


def _shares(fixed: Mapping[str, int]) -> dict[str, Fraction]:
    total = sum(fixed.values())
    if total <= 0:
        return {p: Fraction(0) for p in fixed}
    return {p: Fraction(v, total) for p, v in fixed.items()}


def onchain_scores(
    hoster_fixed: Mapping[str, int],
    validator_fixed: Mapping[str, int],
    node_ids: Mapping[str, int],
    *,
    params: ScoringParams = DEFAULT_PARAMS,
) -> list[tuple[int, int]]:
    """[(node_id, floor(score * 1e18))] sorted by node id, for the nodes in `node_ids`.

    `node_ids` maps peer id -> subnet node id for the nodes that count on chain (class
    Included or above); every such node appears, with 0 if it earned nothing. A node's score
    is `hoster_weight * hoster share + validator_weight * validator share`, where a share is
    the node's fraction of its role's total (exact rationals), so each role receives its
    weight of the epoch's emission however many nodes it has.
    """
    hs = _shares({p: int(v) for p, v in hoster_fixed.items()})
    vs = _shares({p: int(v) for p, v in validator_fixed.items()})
    wh, wv = Fraction(params.hoster_weight), Fraction(params.validator_weight)
    out: dict[int, int] = {}
    for peer, nid in node_ids.items():
        combined = wh * hs.get(peer, Fraction(0)) + wv * vs.get(peer, Fraction(0))
        value = int(combined * SCORE_SCALE)
        out[nid] = min(value, out.get(nid, value))  # duplicate node ids: keep the lowest, like the chain
    return sorted(out.items())
