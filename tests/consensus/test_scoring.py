import json
import math
import random
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from consensus.scoring import SCORE_SCALE, ScoringParams, onchain_scores, score_hosters, score_validators, to_fixed
from tests.consensus._fixtures import SHAPE, make_outputs

ROOT = Path(__file__).resolve().parents[2]


def _shuffled(d: dict, seed: int) -> dict:
    items = list(d.items())
    random.Random(seed).shuffle(items)
    return {k: (_shuffled(v, seed + 1) if isinstance(v, dict) else v) for k, v in items}


def _fixed(outputs, **kw) -> dict[str, int]:
    return score_hosters(outputs, expected_shape=SHAPE, **kw).fixed()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 12), blocks=st.integers(1, 6), perm=st.integers(0, 10**6),
       noise=st.sampled_from([0.0, 1e-7, 1e-3, 0.2]))
def test_order_invariance(seed, n, blocks, perm, noise):
    outputs = make_outputs(seed, n, blocks, noise)
    assert _fixed(outputs) == _fixed(_shuffled(outputs, perm))
    p = ScoringParams(tolerance=None)
    assert _fixed(outputs, params=p) == _fixed(_shuffled(outputs, perm), params=p)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(2, 12), blocks=st.integers(1, 6))
def test_honest_scores_close_to_one(seed, n, blocks):
    outputs = make_outputs(seed, n, blocks, noise=1e-6)
    res = score_hosters(outputs, expected_shape=SHAPE)
    for peer, s in res.scores.items():
        if any(b not in res.uncompared for b in outputs[peer]):
            assert s > 0.9999, (peer, s)
        else:
            assert s == 0.0  # single-hoster rule: nothing to compare with


def test_identical_outputs_score_exactly_one():
    base = {b: np.ones(SHAPE, np.float32) for b in range(3)}
    res = score_hosters({f"p{i}": dict(base) for i in range(4)}, expected_shape=SHAPE)
    assert set(res.scores.values()) == {1.0}
    assert to_fixed(1.0) == SCORE_SCALE


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10**6), tol=st.sampled_from([None, 0.05]))
def test_perturbation_lowers_score_monotonically(seed, tol):
    rng = np.random.default_rng(seed)
    truth = rng.standard_normal(SHAPE).astype(np.float32)
    direction = rng.standard_normal(SHAPE).astype(np.float32)
    params = ScoringParams(tolerance=tol)
    last = None
    for scale in [0.0, 1e-4, 1e-3, 1e-2, 0.03, 0.1, 0.3, 1.0, 3.0]:
        outputs = {f"h{i}": {0: truth.copy()} for i in range(3)}
        outputs["x"] = {0: (truth + scale * direction).astype(np.float32)}
        s = score_hosters(outputs, expected_shape=SHAPE, params=params).scores
        if last is not None:
            assert s["x"] <= last, (scale, s["x"], last)
        assert all(s[f"h{i}"] >= s["x"] for i in range(3))
        last = s["x"]
    assert last < (0.5 if tol is None else 1e-12)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_zero(bad):
    base = np.ones(SHAPE, np.float32)
    broken = base.copy()
    broken[0, 0, 0] = bad
    outputs = {"a": {0: base, 1: base}, "b": {0: base, 1: base}, "c": {0: broken, 1: broken}}
    s = score_hosters(outputs, expected_shape=SHAPE).scores
    assert s["c"] == 0.0 and s["a"] == 1.0 and s["b"] == 1.0


def test_wrong_shape_and_missing_score_zero():
    base = np.ones(SHAPE, np.float32)
    outputs = {"a": {0: base}, "b": {0: base}, "c": {0: np.ones((1, 2, 2), np.float32)}}
    s = score_hosters(outputs, ["a", "b", "c", "missing"], expected_shape=SHAPE).scores
    assert s == {"a": 1.0, "b": 1.0, "c": 0.0, "missing": 0.0}


def test_lazy_random_output_gets_zero_and_honest_keep_one():
    rng = np.random.default_rng(0)
    truth = rng.standard_normal(SHAPE).astype(np.float32)
    outputs = {"h1": {0: truth}, "h2": {0: truth}, "lazy": {0: rng.standard_normal(SHAPE).astype(np.float32)}}
    s = score_hosters(outputs, expected_shape=SHAPE).scores
    assert s["lazy"] == 0.0 and s["h1"] == s["h2"] == 1.0
    # without the hard cut (tolerance=None) the curve alone still gives the cheat ~nothing
    plain = score_hosters(outputs, expected_shape=SHAPE, params=ScoringParams(tolerance=None)).scores
    assert plain["lazy"] < 1e-4 and plain["h1"] == plain["h2"] == 1.0


def test_two_disagreeing_hosters_are_disputed_not_zeroed():
    rng = np.random.default_rng(3)
    outputs = {"a": {0: rng.standard_normal(SHAPE)}, "b": {0: rng.standard_normal(SHAPE)}}
    res = score_hosters(outputs, expected_shape=SHAPE)
    assert res.disputed == {0: ["a", "b"]} and 0 not in res.block_scores
    assert res.scores == {"a": 0.5, "b": 0.5}


def test_single_hoster_block_rule():
    base = np.ones(SHAPE, np.float32)
    outputs = {"a": {0: base, 1: base}, "b": {0: base}, "solo": {5: base}}
    res = score_hosters(outputs, expected_shape=SHAPE)
    assert res.uncompared == {1: "a", 5: "solo"}
    assert res.scores["a"] == 1.0  # block 1 left out of a's mean, neither helps nor hurts
    assert res.scores["solo"] == 0.0  # nothing comparable: unverifiable
    lenient = ScoringParams(uncompared_score=0.5)
    assert score_hosters(outputs, expected_shape=SHAPE, params=lenient).scores["solo"] == 0.5


def test_hoster_score_is_mean_over_blocks():
    rng = np.random.default_rng(5)
    t0, t1 = rng.standard_normal(SHAPE), rng.standard_normal(SHAPE)
    outputs = {"a": {0: t0, 1: t1}, "b": {0: t0, 1: t1}, "c": {0: t0, 1: t1},
               "x": {0: t0, 1: rng.standard_normal(SHAPE)}}
    s = score_hosters(outputs, expected_shape=SHAPE).scores
    assert s["x"] == pytest.approx(0.5)


def test_to_fixed_edges():
    assert to_fixed(0.0) == 0 and to_fixed(-1.0) == 0 and to_fixed(math.nan) == 0 and to_fixed(math.inf) == 0
    assert to_fixed(2.0) == SCORE_SCALE
    assert to_fixed(0.5) == SCORE_SCALE // 2
    x = 0.1
    assert to_fixed(x) == int(Fraction(x) * SCORE_SCALE)  # exact floor, not float(x * 1e18)


# ---- validators -------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    sets=st.dictionaries(
        st.text("vw0123", min_size=1, max_size=4),
        st.dictionaries(st.text("abc", min_size=1, max_size=3), st.integers(0, 10**18), max_size=6),
        max_size=6,
    ),
    perm=st.integers(0, 1000),
)
def test_validator_scores_order_invariant(sets, perm):
    a = score_validators(sets, ["zz"])
    b = score_validators(_shuffled(sets, perm), ["zz"])
    assert a == b
    assert a["zz"] == 0.0 or "zz" in sets
    assert all(0.0 <= v <= 1.0 for v in a.values())


def test_validator_scoring_agreement_and_liar():
    honest = {"h1": 10**18, "h2": 5 * 10**17}
    s = score_validators({"v1": honest, "v2": honest, "v3": dict(honest)}, ["v1", "v2", "v3", "silent"])
    assert s["v1"] == s["v2"] == s["v3"] == 1.0 and s["silent"] == 0.0
    s = score_validators({"v1": honest, "v2": honest, "liar": {"h1": 0, "h2": 10**18}})
    assert s["liar"] < s["v1"] == s["v2"] < 1.0
    # two disagreeing validators are not both zeroed (unlike max(0.3 - err/max_err, 0))
    s = score_validators({"v1": honest, "v2": {"h1": 9 * 10**17, "h2": 5 * 10**17}})
    assert s["v1"] > 0.9 and s["v2"] > 0.9


# ---- on-chain integers --------------------------------------------------------------------------


def test_onchain_scores_weights_and_sorting():
    hoster = {"h1": 10**18, "h2": 10**18, "v1": 0}
    validator = {"v1": 10**18, "v2": 10**18}
    node_ids = {"h2": 4, "h1": 3, "v1": 1, "v2": 2, "idle": 9}
    out = onchain_scores(hoster, validator, node_ids)
    assert [n for n, _ in out] == [1, 2, 3, 4, 9]
    d = dict(out)
    assert d[3] == d[4] == 2 * 10**17  # 0.4 * 1/2
    assert d[1] == d[2] == 3 * 10**17  # 0.6 * 1/2
    assert d[9] == 0
    assert sum(d.values()) == 10**18
    custom = dict(onchain_scores(hoster, validator, node_ids, params=ScoringParams(
        hoster_weight=Fraction(1, 2), validator_weight=Fraction(1, 2))))
    assert custom[3] == 25 * 10**16


def test_onchain_no_validator_reveals_yet():
    out = dict(onchain_scores({"h1": 10**18, "h2": 0}, {}, {"h1": 1, "h2": 2, "v": 3}))
    assert out == {1: 4 * 10**17, 2: 0, 3: 0}


# ---- determinism across processes -----------------------------------------------------------------

_SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
from consensus.scoring import score_hosters, score_validators, onchain_scores
from tests.consensus._fixtures import SHAPE, make_outputs
res = {{}}
for seed in range(6):
    outs = make_outputs(seed, 9, 5, noise=[0.0, 1e-6, 1e-3, 0.04, 0.1, 0.5][seed])
    fixed = score_hosters(outs, expected_shape=SHAPE).fixed()
    refs = {{"v": make_outputs(seed + 100, 1, 5, noise=1e-6).popitem()[1]}}
    with_ref = score_hosters(outs, expected_shape=SHAPE, references=refs)
    fixed.update({{"ref:" + k: v for k, v in with_ref.fixed().items()}})
    vals = score_validators({{"a": fixed, "b": {{k: v // 2 for k, v in fixed.items()}}}})
    vfixed = {{k: int(v * 1e6) for k, v in vals.items()}}
    ids = {{p: i for i, p in enumerate(sorted(fixed))}}
    res[seed] = [fixed, repr(vals), onchain_scores(fixed, vfixed, ids)]
print(json.dumps(res, sort_keys=True))
"""


def test_identical_across_processes():
    script = _SCRIPT.format(root=str(ROOT))
    outs = set()
    for hashseed in ("1", "2"):
        r = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=str(ROOT),
            env={"PYTHONHASHSEED": hashseed, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": hashseed},
        )
        assert r.returncode == 0, r.stderr
        outs.add(r.stdout)
    assert len(outs) == 1
    out = outs.pop()
    # and equal to this process (different hash seed, thread count, import order)
    local: dict = {}
    exec(compile(script.replace("print(json.dumps(res, sort_keys=True))", "OUT = json.dumps(res, sort_keys=True)"),
                 "<score>", "exec"), local)
    assert local["OUT"] + "\n" == out
    data = json.loads(out)
    assert any(v for _, v in data["1"][2])  # non-trivial content


def test_huge_finite_outputs_cannot_poison_the_mean():
    rng = np.random.default_rng(9)
    truth = rng.standard_normal(SHAPE).astype(np.float32)
    huge = np.full(SHAPE, 3e38, np.float32)
    outputs = {"h1": {0: truth}, "h2": {0: truth}, "h3": {0: truth}, "bad": {0: huge}}
    s = score_hosters(outputs, expected_shape=SHAPE).scores
    assert s["bad"] == 0.0 and s["h1"] == s["h2"] == s["h3"] == 1.0
