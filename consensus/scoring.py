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

Hoster rules (per probe block `i`; docs/PROTOCOL.md "Scoring" is the normative text):

- the block's hosters are those with a valid reveal containing `i`; an output that is
  non-finite or of the wrong shape scores 0 for that block;
- **reference**: if validators holding the weights revealed reference outputs for `i`
  (`references`), the center is their coordinate-wise median, provided a strict majority
  of them lies within `agreement` of it (otherwise they are ignored for the block and it is
  listed in `reference_conflicts`). A reference from a signer that also revealed outputs
  for the block as a hoster is not used for that block (nobody referees itself). With a
  reference every hoster of the block is compared, even a lone one;
- without a reference the center is the coordinate-wise median of the hosters' outputs
  (a robust center: a minority cannot move it), provided a strict majority of them lies
  within `agreement` of it. Otherwise the block is **disputed**: nobody can tell who is
  right, so it is left out of every one of its hosters' means (like an uncompared block)
  and listed in `disputed`;
- `d = ||out - center|| / (||center|| + eps)`, `s = 1 / (1 + (d / scale)^2)`, and `s = 0`
  when `d > tolerance` (`hoster_curve`). With scale 2e-3 honest numeric noise (measured
  <= 1e-5, benchmarks/honest_noise.py) scores >= 0.99 and a 1% shading 0.038;
- **single-hoster rule**: a block with only one valid output and no reference cannot be
  compared: it is left out of that hoster's mean. A hoster none of whose blocks could be
  compared scores `disputed_score` if one of them was disputed (a dispute proves nothing
  against either side), else `uncompared_score` (default 0: unverifiable work is not
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
    tolerance: float | None = 0.05  # d beyond this scores 0 (None: no cut)
    scale: float = 2e-3  # s = 1 / (1 + (d / scale)^2): 0.99 at d = 2e-4, 0.5 at 2e-3, 0.038 at 1e-2
    agreement: float = 2e-3  # outputs within this of the center agree (majority rule, disputes)
    uncompared_score: float = 0.0
    disputed_score: float = 0.5
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
    """Hoster scores plus the per-block detail a report shows.

    `disputed`: block -> its hosters, for blocks without a reference whose hosters had no
    majority; `referenced`: block -> the validators whose reference was the center;
    `reference_conflicts`: blocks whose references disagreed (ignored, hosters' median used).
    """

    scores: dict[str, float]
    block_scores: dict[int, dict[str, float]] = field(default_factory=dict)
    uncompared: dict[int, str] = field(default_factory=dict)
    disputed: dict[int, list[str]] = field(default_factory=dict)
    referenced: dict[int, list[str]] = field(default_factory=dict)
    reference_conflicts: list[int] = field(default_factory=list)

    def fixed(self) -> dict[str, int]:
        return {p: to_fixed(s) for p, s in sorted(self.scores.items())}


def hoster_curve(d: float, params: ScoringParams = DEFAULT_PARAMS) -> float:
    """Score of an output at relative distance `d` from its block's center (0 if non-finite or beyond tolerance)."""
    if not math.isfinite(d) or d < 0 or (params.tolerance is not None and d > params.tolerance):
        return 0.0
    r = d / params.scale
    return 1.0 / (1.0 + r * r)


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


def reference_center(refs: np.ndarray, params: ScoringParams = DEFAULT_PARAMS) -> np.ndarray | None:
    """The center given by finite reference rows: their coordinate-wise median, if a strict
    majority of them lies within `agreement` of it (one lying validator among three cannot
    move it); None if they disagree."""
    center = refs[0].astype(np.float64) if refs.shape[0] == 1 else _median_rows(refs)
    d = _rel_dist(refs.astype(np.float64), center, params.eps)
    if 2 * int((d <= params.agreement).sum()) <= refs.shape[0]:
        return None
    return center


def score_block(peers: list[str], rows: np.ndarray, params: ScoringParams = DEFAULT_PARAMS,
                raw: np.ndarray | None = None, center: np.ndarray | None = None) -> dict[str, float] | None:
    """Scores of the (finite, same-shape) outputs of one block, `peers` sorted; None if disputed.

    `rows` is float64; `raw` optionally the same values in their original dtype (for a cheaper
    median); `center` the reference (float64, flat) if the block has one, else the hosters'
    median is the center and needs a strict majority within `agreement` (len(peers) >= 2).
    """
    n = len(peers)
    if center is None:
        center = _median_rows(rows if raw is None else raw)
        d = _rel_dist(rows, center, params.eps)
        if 2 * int((d <= params.agreement).sum()) <= n:
            return None
    else:
        d = _rel_dist(rows, center, params.eps)
    return {p: hoster_curve(dk, params) for p, dk in zip(peers, d.tolist())}


def _majority_shape(entries: list[tuple[str, np.ndarray]]) -> tuple:
    counts: dict[tuple, int] = {}
    for _, a in entries:
        counts[a.shape] = counts.get(a.shape, 0) + 1
    return min(counts, key=lambda s: (-counts[s], s))


def _finite_stack(entries: list[tuple[str, np.ndarray]]):
    """(raw rows, float64 rows, finite mask) of same-shape entries: one widening per block."""
    raw = np.stack([a.reshape(-1) for _, a in entries])
    if raw.dtype.kind != "f":
        raw = raw.astype(np.float64)
    rows = raw.astype(np.float64)
    return raw, rows, np.isfinite(rows).all(axis=1)


@dataclass
class _BlockResult:
    scored: dict[str, float]
    lone: str | None = None
    disputed: list[str] | None = None
    referenced: list[str] | None = None
    conflict: bool = False


def _score_block_entries(entries: list[tuple[str, np.ndarray]], refs: list[tuple[str, np.ndarray]],
                         params: ScoringParams) -> _BlockResult:
    """One block's result from its (peer, output) entries and (validator, reference) entries.

    Entries of a minority shape or with non-finite values score 0; references of another shape
    or non-finite are ignored; the rest go to `score_block`.
    """
    res = _BlockResult({})
    own = {p for p, _ in entries}
    refs = [(v, a) for v, a in refs if v not in own]  # nobody referees a block it serves itself
    if len({a.shape for _, a in entries}) != 1:  # only without expected_shape
        best = _majority_shape(entries)
        res.scored.update({p: 0.0 for p, a in entries if a.shape != best})
        entries = [(p, a) for p, a in entries if a.shape == best]
    raw, rows, finite = _finite_stack(entries)
    if not finite.all():
        res.scored.update({p: 0.0 for (p, _), ok in zip(entries, finite.tolist()) if not ok})
        rows, raw = rows[finite], raw[finite]
        entries = [e for e, ok in zip(entries, finite.tolist()) if ok]
    center = None
    refs = [(v, a) for v, a in refs if a.shape == entries[0][1].shape] if entries else []
    if refs:
        _, ref_rows, ref_ok = _finite_stack(refs)
        refs = [r for r, ok in zip(refs, ref_ok.tolist()) if ok]
        if refs:
            center = reference_center(ref_rows[ref_ok], params)
            res.conflict = center is None
            res.referenced = None if center is None else [v for v, _ in refs]
    if not entries:
        return res
    if center is None and len(entries) < 2:
        res.lone = entries[0][0]
        return res
    scored = score_block([p for p, _ in entries], rows, params, raw, center)
    if scored is None:
        res.disputed = [p for p, _ in entries]
    else:
        res.scored.update(scored)
    return res


def _by_block(values: Mapping[str, Mapping[int, object]], expected_shape, zeroed: dict | None):
    """block -> [(signer, array)] in signer order; wrong-shape entries go to `zeroed` (or are dropped)."""
    out: dict[int, list[tuple[str, np.ndarray]]] = {}
    for peer in sorted(values):
        for block, x in sorted(values[peer].items()):
            arr = _as_array(x)
            if expected_shape is not None and arr.shape != tuple(expected_shape):
                if zeroed is not None:
                    zeroed.setdefault(block, {})[peer] = 0.0
                continue
            out.setdefault(block, []).append((peer, arr))
    return out


def score_hosters(
    outputs: Mapping[str, Mapping[int, object]],
    participants: Iterable[str] = (),
    *,
    references: Mapping[str, Mapping[int, object]] | None = None,
    expected_shape: tuple[int, ...] | None = None,
    params: ScoringParams = DEFAULT_PARAMS,
    threads: int | None = None,
) -> HosterScoring:
    """Score hosters from their verified block outputs.

    `outputs`: peer id -> {block index -> tensor/array} for hosters whose reveal matched
    their commit. `references`: validator peer id -> {block -> reference output} from valid
    reference reveals (may be empty). `participants`: every hoster that should appear in
    the result (e.g. all committers); those without outputs score 0.
    """
    block_scores: dict[int, dict[str, float]] = {}
    by_block = _by_block(outputs, expected_shape, block_scores)
    refs = _by_block(references or {}, expected_shape, None)

    blocks = sorted(by_block)
    # Blocks are independent and each is computed by the same sequence of correctly rounded
    # numpy ops, so scoring them on several threads (numpy releases the GIL) changes no bit.
    workers = min(len(blocks), SCORING_THREADS if threads is None else max(1, threads))
    one = lambda b: _score_block_entries(by_block[b], refs.get(b, []), params)  # noqa: E731
    if workers > 1:
        with ThreadPoolExecutor(workers, thread_name_prefix="scoring") as pool:
            results = list(pool.map(one, blocks))
    else:
        results = [one(b) for b in blocks]
    result = HosterScoring({})
    for block, r in zip(blocks, results):
        if r.scored:
            block_scores.setdefault(block, {}).update(r.scored)
        if r.lone is not None:
            result.uncompared[block] = r.lone
        if r.disputed is not None:
            result.disputed[block] = r.disputed
        if r.referenced is not None:
            result.referenced[block] = r.referenced
        if r.conflict:
            result.reference_conflicts.append(block)

    per_peer: dict[str, list[float]] = {}
    for block in sorted(block_scores):
        for peer, s in block_scores[block].items():
            per_peer.setdefault(peer, []).append(s)
    in_dispute = {p for peers in result.disputed.values() for p in peers}
    for peer in sorted(set(participants) | set(outputs)):
        vals = per_peer.get(peer)
        if vals:
            result.scores[peer] = math.fsum(vals) / len(vals)
        elif peer in in_dispute:  # nothing compared, something disputed: neither side is proven wrong
            result.scores[peer] = params.disputed_score
        elif outputs.get(peer):  # every block it revealed was the only valid output of that block
            result.scores[peer] = params.uncompared_score
        else:
            result.scores[peer] = 0.0
    result.block_scores = {b: dict(sorted(v.items())) for b, v in sorted(block_scores.items())}
    return result


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
