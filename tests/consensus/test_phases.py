import pytest

from consensus.phases import Phase, RecordKind, block_window, in_window, phase_of


@pytest.mark.parametrize(
    "p,phase",
    [(0.0, Phase.PROPOSE), (0.149, Phase.PROPOSE), (0.15, Phase.COMMIT), (0.49, Phase.COMMIT),
     (0.5, Phase.REVEAL), (0.599, Phase.REVEAL), (0.6, Phase.SCORE), (0.999, Phase.SCORE)],
)
def test_phase_table(p, phase):
    assert phase_of(p) is phase


@pytest.mark.parametrize("p", [-0.01, 1.0, float("nan")])
def test_progress_out_of_range(p):
    with pytest.raises(ValueError):
        phase_of(p)


def test_windows():
    assert in_window(RecordKind.HOSTER_COMMIT, 0.2)
    assert not in_window(RecordKind.HOSTER_COMMIT, 0.5)
    assert in_window(RecordKind.HOSTER_COMMIT, 0.51, grace=0.02)
    assert in_window(RecordKind.HOSTER_REVEAL, 0.55) and not in_window(RecordKind.HOSTER_REVEAL, 0.61)
    assert in_window(RecordKind.VALIDATOR_REVEAL, 0.5)
    assert in_window(RecordKind.VALIDATOR_COMMIT, 0.7) and not in_window(RecordKind.VALIDATOR_COMMIT, 0.55)
    # probe: elected from 0, others only from 0.10
    assert in_window(RecordKind.PROBE, 0.0) and not in_window(RecordKind.PROBE, 0.05, elected=False)
    assert in_window(RecordKind.PROBE, 0.12, elected=False)
    assert not in_window(RecordKind.PROBE, 0.2)
    assert in_window("propose", 0.1) and not in_window("propose", 0.3)


def test_block_window_matches_progress():
    for bpe in (10, 16, 20, 37):
        for kind in RecordKind:
            first, last = block_window(kind, 1000, bpe)
            for b in range(1000, 1000 + bpe):
                assert (first <= b <= last) == in_window(kind, (b - 1000) / bpe), (kind, bpe, b)
