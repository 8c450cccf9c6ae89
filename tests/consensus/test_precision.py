"""Precision classes (consensus/precision.py): total on the known claims, ordered, deterministic."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from consensus.precision import CLASSES, DTYPES, QUANT_MODES, RANK, by_preference, meets_minimum, precision_class

dtypes = st.sampled_from(DTYPES)
quants = st.sampled_from(QUANT_MODES)
classes = st.sampled_from(CLASSES)


@given(dtypes, quants)
def test_class_is_the_quantization_else_the_dtype(dtype, quant):
    cls = precision_class(dtype, quant)
    assert cls in CLASSES
    assert cls == (dtype if quant == "none" else quant)


@given(st.text(max_size=12), st.text(max_size=12))
def test_unknown_claims_raise(dtype, quant):
    if dtype in DTYPES and quant in QUANT_MODES:
        return
    with pytest.raises(ValueError):
        precision_class(dtype, quant)


@given(classes, classes, classes)
def test_minimum_is_a_total_preorder_by_rank(a, b, c):
    assert meets_minimum(a, a) and meets_minimum(a, None)
    assert meets_minimum(a, b) or meets_minimum(b, a)
    if meets_minimum(a, b) and meets_minimum(b, c):
        assert meets_minimum(a, c)
    assert meets_minimum(a, b) == (RANK[a] >= RANK[b])


def test_quantized_never_meets_float_minimums():
    assert not meets_minimum("int8", "bfloat16") and not meets_minimum("nf4", "int8")
    assert meets_minimum("float32", "nf4") and meets_minimum("float16", "bfloat16")
    with pytest.raises(ValueError, match="unknown precision"):
        meets_minimum("int8", "int3")
    assert not meets_minimum("int3", None)


@given(st.lists(st.sampled_from(CLASSES + ("junk",)), max_size=12), st.randoms())
def test_preference_order_ignores_input_order(items, rnd):
    shuffled = list(items)
    rnd.shuffle(shuffled)
    assert by_preference(items) == by_preference(shuffled)
    ranked = by_preference(items)
    assert "junk" not in ranked and len(ranked) == len(set(ranked))
    assert all(RANK[x] >= RANK[y] for x, y in zip(ranked, ranked[1:]))
