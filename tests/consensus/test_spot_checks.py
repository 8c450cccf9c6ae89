"""Spot-check plans: a pure function of public data (epoch randomness, subnet, epoch, hoster)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from consensus.spot_checks import EARLIEST, LATEST, spot_check_plan


@settings(max_examples=80, deadline=None)
@given(randomness=st.binary(min_size=32, max_size=32), subnet=st.integers(0, 2**32), epoch=st.integers(0, 2**40),
       hoster=st.text(min_size=1, max_size=60), vocab=st.integers(2, 200_000))
def test_plans_are_deterministic_and_bounded(randomness, subnet, epoch, hoster, vocab):
    plan = spot_check_plan(randomness, subnet, epoch, hoster, vocab)
    assert plan == spot_check_plan(randomness, subnet, epoch, hoster, vocab)
    assert EARLIEST <= plan.at < LATEST
    assert 4 <= len(plan.prompt) <= 16 and 2 <= len(plan.decode) <= 6
    assert all(0 <= t < vocab for t in plan.prompt + plan.decode)


def test_plans_differ_per_hoster_epoch_and_randomness():
    r = bytes(range(32))
    plans = {spot_check_plan(r, 1, 5, "a", 1000), spot_check_plan(r, 1, 5, "b", 1000),
             spot_check_plan(r, 1, 6, "a", 1000), spot_check_plan(bytes(32), 1, 5, "a", 1000),
             spot_check_plan(r, 2, 5, "a", 1000)}
    assert len(plans) == 5


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        spot_check_plan(b"short", 1, 1, "a", 100)
    with pytest.raises(ValueError):
        spot_check_plan(bytes(32), 1, 1, "a", 1)
