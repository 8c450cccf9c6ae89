"""Packed oneDNN linears: same products as nn.Linear (to float32 rounding), same bytes, opt-out works."""

from __future__ import annotations

import gc
import shutil
import sys

import pytest
import torch
from torch import nn

from subnet.blocks import load_blocks
from subnet.kernels import PackedLinear, pack_linears, packing_supported

pytestmark = pytest.mark.skipif(not packing_supported(torch.float32, "cpu"), reason="torch build without oneDNN")


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 64), (8, 64), (3, 5, 64), (2, 300, 64)])
def test_packed_linear_equals_linear(shape, bias):
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(64, 176, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(176, 64, generator=g))
        if bias:
            lin.bias.copy_(torch.randn(176, generator=g))
    x = torch.randn(*shape, generator=g)
    packed = PackedLinear(lin)
    y = packed(x)
    assert y.shape == (*shape[:-1], 176)
    torch.testing.assert_close(y, lin(x), rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(packed(x), y, rtol=0, atol=0)  # deterministic for the same input


def test_packed_linear_rejects_other_dtypes():
    packed = PackedLinear(nn.Linear(8, 8))
    with pytest.raises(TypeError, match="float32"):
        packed(torch.randn(1, 8, dtype=torch.bfloat16))


def test_span_packs_every_linear_and_keeps_outputs(tiny_llama):
    plain = load_blocks(tiny_llama, 0, 4, progress=False, packed=False)
    packed = load_blocks(tiny_llama, 0, 4, progress=False)
    linears = [m for m in packed.modules() if isinstance(m, nn.Linear)]
    assert linears == [] and sum(isinstance(m, PackedLinear) for m in packed.modules()) == 4 * 7
    assert packed.weight_bytes() == plain.weight_bytes()
    x = torch.randn(2, 9, plain.hidden_size, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(packed(x), plain(x), rtol=1e-4, atol=1e-5)


def test_opt_out_and_unsupported_dtype(tiny_llama, monkeypatch):
    bf16 = load_blocks(tiny_llama, 0, 1, "bfloat16", progress=False)
    assert not any(isinstance(m, PackedLinear) for m in bf16.modules())  # stays nn.Linear
    monkeypatch.setenv("MESH_PACKED_LINEARS", "0")
    span = load_blocks(tiny_llama, 0, 1, progress=False)
    assert not any(isinstance(m, PackedLinear) for m in span.modules())
    assert pack_linears(nn.Sequential(nn.Linear(4, 4))) == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_packed_load_does_not_keep_the_checkpoint_mapped(tiny_llama, tmp_path):
    """Packed weights are copies: the checkpoint's pages must not stay resident next to them."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_llama, ckpt)
    weights = str(ckpt / "model.safetensors")

    def mapped() -> bool:
        gc.collect()
        return weights in open("/proc/self/maps").read()

    plain = load_blocks(ckpt, 0, 2, progress=False, packed=False)
    assert mapped()  # zero-copy tensors point into the file map
    del plain
    assert not mapped()
    packed = load_blocks(ckpt, 0, 2, progress=False)
    assert not mapped() and packed.weight_bytes() > 0
