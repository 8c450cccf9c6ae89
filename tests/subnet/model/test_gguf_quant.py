"""GGUF blocks kept quantized per `--quant`: dequantized layer by layer and quantized right away, equal
to the same quantized blocks loaded from safetensors, with the file's pages released as it goes."""

from __future__ import annotations

import pytest
import torch

from subnet.model.blocks import load_blocks
from subnet.model.tiny_model import write_gguf


@pytest.fixture(scope="module")
def wide_gguf(tiny_model_factory, tmp_path_factory):
    """Hidden 128, kv heads 4: every linear is a multiple of 64 x 256 values, so nf4 quantizes all of them."""
    src = tiny_model_factory("llama", hidden_size=128, intermediate_size=256, num_kv_heads=4)
    return src, str(write_gguf(src, tmp_path_factory.mktemp("gguf-q") / "m.gguf", "f32"))


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_quantized_gguf_span_equals_quantized_safetensors_span(wide_gguf, mode):
    src, gguf = wide_gguf
    got = load_blocks(gguf, 2, 6, progress=False, quant=mode)
    want = load_blocks(src, 2, 6, progress=False, quant=mode)
    full = load_blocks(src, 2, 6, progress=False, linear_kernel="torch")
    assert got.quant == mode and got.weight_bytes() == want.weight_bytes() < 0.3 * full.weight_bytes()
    x = torch.randn(2, 9, 128, generator=torch.Generator().manual_seed(0))
    assert torch.equal(got(x), want(x))  # same weights, same quantization: the same precision class, bit for bit
    assert not torch.allclose(got(x), full(x), rtol=1e-3, atol=1e-3)


def test_release_drops_the_pages_read(wide_gguf):
    from subnet.model.architectures import classes
    from subnet.model.blocks import _gguf_index, load_config

    _, gguf = wide_gguf
    config = load_config(gguf)
    index = _gguf_index(gguf, config, classes(config)[0], 0, 2)
    first = index.load(index.names(), torch.float32, torch.device("cpu"))
    index.release()
    again = index.load(index.names(), torch.float32, torch.device("cpu"))  # re-read from the file after release
    assert all(torch.equal(first[n], again[n]) for n in first)
