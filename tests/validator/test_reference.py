"""The validator's reference computation equals the hosters' probe path bit for bit."""

from __future__ import annotations

import shutil

import torch

from consensus.probe import make_probe_spec
from hoster.backend import Backend
from hoster.duty import HosterDuty
from subnet.model.blocks import load_blocks
from validator.reference import ReferenceModel, ReferencePublisher, holds_weights


def test_reference_equals_the_hoster_probe_path(tiny_llama):
    spec = make_probe_spec(bytes(range(32)), 1, 3, hidden=64, num_blocks=8)
    ref = ReferenceModel(tiny_llama, 8).outputs(spec, list(spec.blocks))
    backend = Backend(load_blocks(tiny_llama, 2, 6, progress=False))
    try:
        duty = HosterDuty.__new__(HosterDuty)  # only run_block: the hoster's own probe computation
        duty.backend = backend
        for b in range(2, 6):
            out = duty.run_block(spec, b)
            assert out.dtype == ref[b].dtype == torch.float32
            assert torch.equal(out, ref[b]), b
    finally:
        backend.shutdown()


def test_holds_weights_and_sampled_blocks(tiny_llama, tmp_path):
    assert holds_weights(tiny_llama)
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    shutil.copy(f"{tiny_llama}/config.json", config_only / "config.json")
    assert not holds_weights(str(config_only)) and not holds_weights(None) and not holds_weights("org/hub-id")
    spec = make_probe_spec(bytes(range(32)), 1, 3, hidden=64, num_blocks=8)
    pub = ReferencePublisher(None, None, 1, ReferenceModel(tiny_llama, 8), max_blocks=3)
    picked = pub.blocks_for(spec)
    assert len(picked) == 3 and picked == sorted(set(picked)) and set(picked) <= set(spec.blocks)
    assert picked == pub.blocks_for(spec)  # drawn from the probe seed: the same on every call
    assert ReferencePublisher(None, None, 1, None).blocks_for(spec) == list(spec.blocks)
