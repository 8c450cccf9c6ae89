"""Hosters serving a .gguf file (real processes, 3-hoster chain) give local transformers' greedy tokens.

The client keeps loading its embeddings/head from the safetensors checkpoint; the hosters read
only their span's tensors from a GGUF file written from the same checkpoint (F32: bit-equal
weights; F16: weights rounded to half, compared with a reference rounded the same way).
"""

from __future__ import annotations

import pytest
import torch

from subnet.client import DistributedModelForCausalLM
from subnet.model.tiny_model import write_gguf

pytestmark = pytest.mark.slow

PROMPTS = ["The quick brown fox", "Hello world! How are you today? I am fine, thank you."]


@pytest.fixture(scope="module")
def gguf_swarm(swarm_factory, tiny_model_factory, tmp_path_factory):
    src = tiny_model_factory("llama")
    f32 = str(write_gguf(src, tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf", "f32"))
    f16 = str(write_gguf(src, tmp_path_factory.mktemp("gguf") / "tiny-f16.gguf", "f16"))
    swarm = swarm_factory()
    swarm.start_hosters_async(f32, [(0, 3), (3, 6), (6, 8)], "--model-name", "g32")
    swarm.start_hosters_async(f16, [(0, 8)], "--model-name", "g16")
    swarm.wait_all()
    models = {}
    try:
        for name in ("g32", "g16"):
            models[name] = DistributedModelForCausalLM.from_pretrained(
                src, initial_peers=swarm.initial_peers, model_name=name, request_timeout=30.0)
            assert models[name].wait_until_servable(90)
        yield src, models
    finally:
        for m in models.values():
            m.close()


def _reference(src: str, round_to_f16: bool):
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    if round_to_f16:  # what the F16 file holds: the layers' matrices in half precision
        with torch.no_grad():
            for p in ref.model.layers.parameters():
                if p.dim() >= 2:
                    p.copy_(p.half().float())
    return ref


@pytest.mark.parametrize("name", ["g32", "g16"])
def test_greedy_tokens_equal_transformers(gguf_swarm, name):
    src, models = gguf_swarm
    model = models[name]
    ref = _reference(src, round_to_f16=name == "g16")
    for prompt in PROMPTS:
        ids = model.tokenizer(prompt, return_tensors="pt")["input_ids"]
        expected = ref.generate(ids, max_new_tokens=16, do_sample=False)
        assert model.generate(ids, max_new_tokens=16).tolist() == expected.tolist(), (name, prompt)
    if name == "g32":
        assert len(model.active_routes()) == 0 and len(model.wait_until_servable(10)) == 3
