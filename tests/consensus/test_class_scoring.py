"""Scoring within precision classes (consensus/class_scoring.py): same-class comparison, the
int8-declared nf4 liar, lone classes, determinism and the single-class equivalence."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from consensus.class_scoring import DEFAULT_CLASS, class_params, hoster_class, reference_classes, score_hosters_by_class
from consensus.precision import CLASSES
from consensus.scoring import DEFAULT_PARAMS, score_hosters
from tests.consensus._fixtures import SHAPE, make_outputs

# measured by benchmarks/honest_noise.py --classes (docs/PROTOCOL.md): worst honest distance within a class
WITHIN_CLASS_NOISE = {"float32": 2e-6, "int8": 2e-6, "nf4": 2e-6, "bfloat16": 1.5e-3, "float16": 1.5e-3}
INT8_VS_NF4 = 0.27  # an nf4 output's distance to the int8 class (measured: 0.273 on the closest probe block)


def _near(rng, truth, rel):
    d = rng.standard_normal(truth.shape)
    return (truth + d * (rel * np.linalg.norm(truth) / np.linalg.norm(d))).astype(np.float32)


def _shuffled(d: dict, seed: int) -> dict:
    items = list(d.items())
    random.Random(seed).shuffle(items)
    return {k: (_shuffled(v, seed + 1) if isinstance(v, dict) else v) for k, v in items}


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 6), blocks=st.integers(1, 5), with_refs=st.booleans())
def test_one_class_scores_exactly_like_score_hosters(seed, n, blocks, with_refs):
    outputs = make_outputs(seed, n, blocks)
    refs = make_outputs(seed + 1, 1, blocks) if with_refs else {}
    plain = score_hosters(outputs, references=refs, expected_shape=SHAPE)
    by_class = score_hosters_by_class(outputs, classes={}, references={DEFAULT_CLASS: refs}, expected_shape=SHAPE)
    assert by_class.scores == plain.scores and by_class.block_scores == plain.block_scores
    assert by_class.disputed == plain.disputed and by_class.referenced == plain.referenced
    assert by_class.uncompared == plain.uncompared and by_class.fixed() == plain.fixed()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), cls=st.sampled_from(CLASSES), other=st.sampled_from(CLASSES),
       with_ref=st.booleans(), shift=st.floats(0.02, 0.3))
def test_honest_within_class_high_liar_low_other_class_untouched(seed, cls, other, with_ref, shift):
    """Honest hosters of a class score >= 0.99 whatever another class serves; a hoster declaring the
    class but serving another one (outputs `shift` away) scores <= 0.05 if a reference or an honest
    majority exists in its class."""
    rng = np.random.default_rng(seed)
    truth = rng.standard_normal(SHAPE).astype(np.float32)
    far = _near(rng, truth, 0.5)  # another class computes something else entirely
    noise = WITHIN_CLASS_NOISE[cls]
    outputs = {"h1": {0: _near(rng, truth, noise)}, "liar": {0: _near(rng, truth, shift)},
               "o1": {0: far}, "o2": {0: _near(rng, far, WITHIN_CLASS_NOISE[other])}}
    classes = {"h1": cls, "liar": cls, "o1": other, "o2": other}
    if cls == other:
        return  # covered by the single-class tests
    refs = {cls: {"v": {0: truth}}} if with_ref else {}
    if not with_ref:
        outputs["h2"], classes["h2"] = {0: _near(rng, truth, noise)}, cls
    res = score_hosters_by_class(_shuffled(outputs, seed), classes=classes, references=refs, expected_shape=SHAPE)
    assert res.scores["h1"] >= 0.99 and res.scores.get("h2", 1.0) >= 0.99
    assert res.scores["liar"] <= 0.05
    assert res.scores["o1"] >= 0.99 and res.scores["o2"] >= 0.99  # the majority rule in their own class
    assert res.classes["liar"] == cls


def test_int8_declared_nf4_served_is_caught_with_the_calibrated_params():
    rng = np.random.default_rng(3)
    int8 = rng.standard_normal(SHAPE).astype(np.float32)
    outputs = {"honest": {0: _near(rng, int8, WITHIN_CLASS_NOISE["int8"])}, "liar": {0: _near(rng, int8, INT8_VS_NF4)}}
    res = score_hosters_by_class(outputs, classes={"honest": "int8", "liar": "int8"},
                                 references={"int8": {"v": {0: int8}}, "float32": {"v": {0: -int8}}},
                                 expected_shape=SHAPE)
    assert res.scores["honest"] >= 0.99 and res.scores["liar"] <= 0.05
    assert res.referenced == {0: ["v"]}


def test_lone_class_member_without_reference_is_uncompared_and_with_two_disputed():
    rng = np.random.default_rng(4)
    truth = rng.standard_normal(SHAPE).astype(np.float32)
    outputs = {"a": {0: truth}, "b": {0: _near(rng, truth, 1e-7)}, "q": {0: _near(rng, truth, 0.02)}}
    classes = {"a": "float32", "b": "float32", "q": "int8"}
    res = score_hosters_by_class(outputs, classes=classes, expected_shape=SHAPE)
    assert res.scores["q"] == DEFAULT_PARAMS.uncompared_score  # nobody to compare with: not paid, not zeroed as a liar
    assert res.uncompared_by_class == {"int8": {0: "q"}} and res.scores["a"] >= 0.99
    # a float32 reference does not referee the int8 class
    res = score_hosters_by_class(outputs, classes=classes, references={"float32": {"v": {0: truth}}},
                                 expected_shape=SHAPE)
    assert res.scores["q"] == DEFAULT_PARAMS.uncompared_score and res.referenced == {0: ["v"]}
    # two disagreeing int8 hosters and no int8 reference: disputed, as in one class
    outputs["q2"], classes["q2"] = {0: _near(rng, truth, 0.2)}, "int8"
    res = score_hosters_by_class(outputs, classes=classes, expected_shape=SHAPE)
    assert res.disputed == {0: ["q", "q2"]} and res.scores["q"] == res.scores["q2"] == DEFAULT_PARAMS.disputed_score


def test_a_hoster_never_referees_a_block_it_serves_in_any_class():
    rng = np.random.default_rng(5)
    truth = rng.standard_normal(SHAPE).astype(np.float32)
    outputs = {"h": {0: truth, 1: truth}, "v": {0: _near(rng, truth, 0.3)}}
    res = score_hosters_by_class(outputs, classes={"h": "int8", "v": "float32"},
                                 references={"int8": {"v": {0: -truth, 1: truth}}}, expected_shape=SHAPE)
    assert res.referenced == {1: ["v"]} and res.uncompared_by_class["int8"] == {0: "h"}
    assert res.scores["h"] >= 0.99


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 7), blocks=st.integers(1, 4),
       picks=st.lists(st.sampled_from(CLASSES + ("int3",)), min_size=7, max_size=7))
def test_deterministic_order_independent_and_total(seed, n, blocks, picks):
    outputs = make_outputs(seed, n, blocks)
    classes = {p: c for p, c in zip(sorted(outputs), picks)}
    refs = {c: make_outputs(seed + 2, 1, blocks) for c in set(picks[:2]) if c in CLASSES}
    a = score_hosters_by_class(outputs, ["absent"], classes=classes, references=refs, expected_shape=SHAPE)
    b = score_hosters_by_class(_shuffled(outputs, seed), ["absent"], classes=_shuffled(classes, seed),
                               references=_shuffled(refs, seed), expected_shape=SHAPE, threads=1)
    assert a.fixed() == b.fixed() and a.block_scores == b.block_scores and a.disputed == b.disputed
    assert set(a.scores) == set(outputs) | {"absent"} and a.scores["absent"] == 0.0
    assert all(0.0 <= s <= 1.0 for s in a.scores.values())
    assert all(a.scores[p] == 0.0 for p, c in classes.items() if c not in CLASSES)


def test_declarations_are_checked():
    assert hoster_class({}) == DEFAULT_CLASS and hoster_class({"precision": "nf4"}) == "nf4"
    assert reference_classes({}) == (DEFAULT_CLASS,)
    assert reference_classes({"precision": ["int8", "float32"]}) == ("int8", "float32")
    for bad in ("int3", 8, None, ["int8"]):
        with pytest.raises(ValueError):
            hoster_class({"precision": bad})
    for bad in ([], ["int8", "int8"], ["fp8"], "int8", list(CLASSES) * 2):
        with pytest.raises(ValueError):
            reference_classes({"precision": bad})
    assert class_params("float32") == DEFAULT_PARAMS
    assert all(class_params(c).scale >= DEFAULT_PARAMS.scale for c in CLASSES)
