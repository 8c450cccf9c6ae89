"""Quantized hosters (`--quant int8`) as real processes: announced, agreeing, routed without mixing.

Swarm: two int8 hosters of [0:8), one float32 hoster of [0:4) only. The float32 class cannot
cover the model, so a default session runs through int8 alone, never float32 + int8.
"""

from __future__ import annotations

import pytest
import torch

from subnet.client import DistributedModelForCausalLM, SessionError
from subnet.client.transport import rpc_forward, rpc_info
from subnet.model.blocks import load_blocks, load_client_parts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quant_swarm(swarm_factory, tiny_model_factory):
    path = tiny_model_factory("llama", hidden_size=128, intermediate_size=256)
    swarm = swarm_factory()
    swarm.start_hosters_async(path, [(0, 8), (0, 8)], "--model-name", "q", "--quant", "int8")
    swarm.start_hosters_async(path, [(0, 4)], "--model-name", "q")
    swarm.wait_all()
    model = DistributedModelForCausalLM.from_pretrained(path, initial_peers=swarm.initial_peers, model_name="q",
                                                        request_timeout=30.0)
    try:
        assert model.wait_until_servable(90)
        yield path, swarm, model
    finally:
        model.close()


def test_announcements_carry_quantization(quant_swarm):
    _, swarm, model = quant_swarm
    infos = [model.runtime.run(rpc_info(model.runtime.p2p, h.peer_id, 10.0), timeout=30) for h in swarm.hosters]
    assert sorted((i["quant"], i["dtype"], i["start"], i["end"]) for i in infos) == [
        ("int8", "float32", 0, 8), ("int8", "float32", 0, 8), ("none", "float32", 0, 4)]
    servers = model.runtime.run(model.manager.servers(force=True), timeout=30)
    assert sorted(s.quant for s in servers) == ["int8", "int8", "none"]


def test_honest_int8_hosters_agree_and_differ_from_float32(quant_swarm):
    _, swarm, model = quant_swarm
    x = torch.randn(1, 8, 128, generator=torch.Generator().manual_seed(5))
    outs = {}
    for h in swarm.hosters:
        outs[h.peer_id] = model.runtime.run(rpc_forward(model.runtime.p2p, h.peer_id, "q", 0, 4, x, 30.0), timeout=60)
    int8 = [outs[h.peer_id] for h in swarm.hosters[:2]]
    fp32 = outs[swarm.hosters[2].peer_id]
    assert torch.equal(int8[0], int8[1])  # same class, same numbers: full score within the class
    rel = ((int8[0] - fp32).norm() / fp32.norm()).item()
    print(f"\nint8 vs float32 hoster output, blocks 0:4: relative error {rel:.4f}")
    assert 1e-4 < rel < 0.2


def test_session_routes_through_one_class_and_matches_local_int8(quant_swarm):
    path, _, model = quant_swarm
    ids = model.tokenizer("The quick brown fox", return_tensors="pt")["input_ids"]
    got = model.generate(ids, max_new_tokens=10)
    # the same computation locally: int8 blocks between the client's parts
    parts = load_client_parts(path, linear_kernel="torch")
    span = load_blocks(path, 0, 8, progress=False, quant="int8")
    cache, seq, step = span.new_cache(), ids, ids
    for _ in range(10):
        step = parts.lm_head(parts.norm(span(parts.embed_tokens(step), cache=cache)))[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, step], 1)
    assert got.tolist() == seq.tolist()


def test_minimum_precision_refuses_quantized_hosters(quant_swarm):
    path, swarm, _ = quant_swarm
    strict = DistributedModelForCausalLM.from_pretrained(path, initial_peers=swarm.initial_peers, model_name="q",
                                                         min_precision="float32", request_timeout=10.0)
    try:
        with pytest.raises(SessionError, match="block 4"):  # float32 covers only [0:4)
            strict.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2)
    finally:
        strict.close()
