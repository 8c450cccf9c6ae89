"""The bandwidth ceiling's arithmetic (benchmarks/ceiling.py): what is counted per token, and the division."""

from __future__ import annotations

import pytest
import torch

from benchmarks.ceiling import (
    Bandwidth,
    bandwidth_from_times,
    ceiling_row,
    ceiling_tokens_per_s,
    kv_bytes_per_token,
    measure_bandwidth,
    weight_bytes_per_token,
)


def test_best_of_runs_and_division() -> None:
    assert bandwidth_from_times(1000, [2.0, 0.5, 1.0]) == 2000.0
    assert ceiling_tokens_per_s(20e9, 200_000_000) == pytest.approx(100.0)
    with pytest.raises(ValueError):
        bandwidth_from_times(1000, [])
    with pytest.raises(ValueError):
        ceiling_tokens_per_s(1e9, 0)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_bytes_per_token_are_the_layers_head_norm_and_one_embedding_row(tiny_model_factory, arch: str) -> None:
    from transformers import AutoModelForCausalLM

    path = tiny_model_factory(arch)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    cfg = model.config
    layers = sum(p.numel() for p in model.model.layers.parameters())
    parts = weight_bytes_per_token(path)
    assert parts["blocks"] == 4 * layers
    assert parts["final_norm"] == 4 * model.model.norm.weight.numel()
    assert parts["lm_head"] == 4 * model.lm_head.weight.numel()  # a tied head counts once, as the head
    assert parts["embedding_row"] == 4 * cfg.hidden_size
    assert parts["total"] == parts["blocks"] + parts["final_norm"] + parts["lm_head"] + parts["embedding_row"]
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    assert kv_bytes_per_token(cfg, 10) == 2 * cfg.num_hidden_layers * heads * head_dim * 10 * 4

    bw = Bandwidth(sum=10e9, mv=12e9, copy=8e9, mib=1, runs=1)
    row = ceiling_row(path, bw)
    assert bw.read == 12e9  # the faster read kernel
    assert row["tokens_per_s"] == pytest.approx(12e9 / parts["total"])
    assert row["ms_per_token"] == pytest.approx(1000 / row["tokens_per_s"])


def test_measured_bandwidth_is_positive_and_read_is_the_faster_kernel() -> None:
    bw = measure_bandwidth(mib=8, runs=2)
    assert min(bw.sum, bw.mv, bw.copy) > 0
    assert bw.read == max(bw.sum, bw.mv)
    assert set(bw.as_dict()) >= {"read_GBps", "copy_GBps"}
