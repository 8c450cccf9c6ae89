"""A 3-hoster chain serving a .gguf file with `--quant nf4` (real processes) gives the greedy tokens of the
same nf4 blocks loaded locally from the safetensors checkpoint, and announces its class."""

from __future__ import annotations

import pytest
import torch

from subnet.client import DistributedModelForCausalLM
from subnet.model.blocks import load_blocks, load_client_parts
from subnet.model.tiny_model import write_gguf

pytestmark = pytest.mark.slow


def test_nf4_gguf_chain_equals_local_nf4(swarm_factory, tiny_model_factory, tmp_path):
    src = tiny_model_factory("llama", hidden_size=128, intermediate_size=256, num_kv_heads=4)
    gguf = str(write_gguf(src, tmp_path / "m.gguf", "f32"))
    swarm = swarm_factory()
    swarm.start_hosters_async(gguf, [(0, 3), (3, 6), (6, 8)], "--model-name", "gq", "--quant", "nf4")
    swarm.wait_all()
    model = DistributedModelForCausalLM.from_pretrained(src, initial_peers=swarm.initial_peers, model_name="gq",
                                                        request_timeout=30.0)
    try:
        assert model.wait_until_servable(90)
        servers = model.runtime.run(model.manager.servers(force=True), timeout=30)
        assert sorted(s.quant for s in servers) == ["nf4"] * 3
        ids = model.tokenizer("The quick brown fox", return_tensors="pt")["input_ids"]
        got = model.generate(ids, max_new_tokens=10)
    finally:
        model.close()
    parts = load_client_parts(src, linear_kernel="torch")
    span = load_blocks(src, 0, 8, progress=False, quant="nf4")
    cache, seq, step = span.new_cache(), ids, ids
    for _ in range(10):
        step = parts.lm_head(parts.norm(span(parts.embed_tokens(step), cache=cache)))[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, step], 1)
    assert got.tolist() == seq.tolist()
