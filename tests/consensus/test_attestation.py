from hypothesis import given, settings, strategies as st

from consensus.attestation import boundary_changes, canonicalize, compare


def test_canonicalize_like_the_chain():
    entries = [(5, 10), (2, 7), (5, 3), (9, 1)]
    assert canonicalize(entries) == [(2, 7), (5, 3), (9, 1)]
    assert canonicalize(entries, eligible={2, 5}) == [(2, 7), (5, 3)]


def test_equal_sets_attest():
    own = [(1, 100), (2, 200)]
    d = compare([(1, 100), (2, 200)], own)
    assert d.attest and d.reason == "equal"


def test_altered_score_not_attested():
    d = compare([(1, 100), (2, 201)], [(1, 100), (2, 200)])
    assert not d.attest and d.mismatches == ((2, 201, 200),)


def test_missing_or_extra_entry_not_attested():
    assert not compare([(1, 100)], [(1, 100), (2, 200)]).attest
    assert not compare([(1, 100), (2, 200), (3, 5)], [(1, 100), (2, 200)]).attest
    assert not compare([], [(1, 100)]).attest


def test_boundary_nodes_tolerated():
    own = [(1, 100), (2, 200), (3, 0)]
    onchain = [(1, 100), (2, 200)]  # node 3 left at the boundary
    assert not compare(onchain, own).attest
    d = compare(onchain, own, boundary_nodes={3})
    assert d.attest and d.tolerated == (3,)
    # eligibility is applied to the own set like the chain does
    assert compare(onchain, own, eligible={1, 2}).attest


def test_boundary_changes():
    assert boundary_changes({1: 4, 2: 3}, {1: 4, 2: 4, 3: 2}) == {2, 3}


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.integers(0, 50), st.integers(0, 10**18), max_size=20), st.randoms())
def test_order_of_entries_irrelevant(scores, rnd):
    entries = list(scores.items())
    shuffled = entries[:]
    rnd.shuffle(shuffled)
    assert compare(sorted(entries), shuffled).attest == bool(entries) or not entries
