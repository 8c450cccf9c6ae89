"""A validator holding the weights loads them once: references, evidence checks and spot checks
share one `ValidatorWeights` (validator/weights.py) and compute what separate copies would."""

from __future__ import annotations

import torch

import validator.weights as weights_mod
from consensus.probe import make_probe_spec
from validator.evidence import local_reference
from validator.reference import ReferenceModel
from validator.spot_checks import local_embedding
from validator.weights import ValidatorWeights


def test_reference_evidence_and_spot_checks_share_one_load(tiny_llama, monkeypatch):
    calls: list[tuple] = []
    real = weights_mod.load_blocks

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(weights_mod, "load_blocks", counting)
    shared = ValidatorWeights(tiny_llama, 8)
    model = ReferenceModel(tiny_llama, 8, "float32", weights=shared)  # the probe references
    evidence, spot_reference, embed = shared.reference(), shared.reference(), shared.embed()
    assert calls == [] and shared.loads == 0  # nothing loads before it is needed

    spec = make_probe_spec(bytes(range(32)), 1, 3, hidden=64, num_blocks=8)
    refs = model.outputs(spec, list(spec.blocks))
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    x = embed(ids)
    by_evidence = evidence(x, 0, 8)
    by_spot = spot_reference(x, 0, 3)
    for _ in range(3):  # more epochs: still one copy
        model.outputs(spec, [0])
        evidence(x, 2, 5)
    assert len(calls) == 1 and shared.loads == 2  # the blocks once, the embedding table once
    assert model._span is shared.blocks()

    # the same numbers as separately loaded copies
    alone = ReferenceModel(tiny_llama, 8).outputs(spec, list(spec.blocks))
    assert all(torch.equal(refs[b], alone[b]) for b in spec.blocks)
    assert torch.equal(x, local_embedding(tiny_llama)(ids))
    assert torch.equal(by_evidence, local_reference(tiny_llama, 8)(x, 0, 8))
    assert torch.equal(by_spot, local_reference(tiny_llama, 8)(x, 0, 3))


def test_a_reference_in_another_dtype_keeps_its_own_copy(tiny_llama):
    shared = ValidatorWeights(tiny_llama, 8)  # float32: evidence needs full precision
    model = ReferenceModel(tiny_llama, 8, "bfloat16", weights=shared)
    assert model.weights is None
    spec = make_probe_spec(bytes(range(32)), 1, 3, hidden=64, num_blocks=8)
    model.outputs(spec, [0])
    assert shared.loads == 0 and model._span.dtype == torch.bfloat16
