"""The fast scoring kernels keep their exact, layout- and thread-independent results."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from consensus.scoring import _median_rows, _tree_sum, score_hosters


def _reference_sum(values: list[float]) -> float:
    """The documented pairing, one Python float at a time: add i + half onto i, carry an odd last."""
    vals = list(values)
    if not vals:
        return 0.0
    while len(vals) > 1:
        half = len(vals) // 2
        nxt = [vals[i] + vals[i + half] for i in range(half)]
        if len(vals) % 2:
            nxt.append(vals[-1])
        vals = nxt
    return vals[0]


@given(arrays(np.float64, st.tuples(st.integers(1, 33), st.integers(1, 5)),
              elements=st.floats(-1e6, 1e6, allow_nan=False)))
@settings(max_examples=60, deadline=None)
def test_tree_sum_follows_the_documented_order_in_any_layout(a):
    expect0 = [_reference_sum(a[:, j].tolist()) for j in range(a.shape[1])]
    expect1 = [_reference_sum(a[i, :].tolist()) for i in range(a.shape[0])]
    for layout in (a, np.asfortranarray(a), a.T.copy().T):
        assert _tree_sum(layout, axis=0).tolist() == expect0
        assert _tree_sum(layout, axis=1).tolist() == expect1
    assert a.tolist() == np.asarray(a).tolist()  # the input is never modified


@given(arrays(np.float32, st.tuples(st.integers(1, 12), st.integers(1, 6)),
              elements=st.floats(-1e3, 1e3, allow_nan=False, width=32)))
@settings(max_examples=60, deadline=None)
def test_median_of_narrow_rows_equals_median_of_widened_rows(rows):
    got = _median_rows(rows)
    assert got.dtype == np.float64
    assert np.array_equal(got, np.median(rows.astype(np.float64), axis=0))


@pytest.mark.parametrize("seed", [0, 1])
def test_scoring_is_bit_identical_on_one_or_many_threads(seed):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((6, 1, 4, 32), dtype=np.float32)
    outputs = {}
    for i in range(9):
        lazy = i % 4 == 3
        outputs[f"peer{i:02d}"] = {
            b: (rng.standard_normal((1, 4, 32), dtype=np.float32) if lazy
                else base[b] + rng.standard_normal((1, 4, 32), dtype=np.float32) * np.float32(1e-6))
            for b in range(i % 3, i % 3 + 4)
        }
    one = score_hosters(outputs, outputs.keys(), threads=1)
    many = score_hosters(outputs, outputs.keys(), threads=4)
    assert one.scores == many.scores
    assert one.block_scores == many.block_scores
    assert one.uncompared == many.uncompared
    assert sum(1 for s in one.scores.values() if s == 0.0) == 2  # the lazy ones
