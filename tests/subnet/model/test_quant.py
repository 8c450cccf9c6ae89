"""Weight-only int8/nf4 blocks (subnet/model/quant.py, torchao): size, agreement within a class, errors."""

from __future__ import annotations

import pytest
import torch

from subnet.model.blocks import load_blocks
from subnet.model.quant import QuantError, check_quant, parse_quant, tensor_bytes


@pytest.fixture(scope="module")
def wide_llama(tiny_model_factory) -> str:
    """Hidden 256: big enough that per-channel scales are a small part of the int8 bytes."""
    return tiny_model_factory("llama", hidden_size=256, intermediate_size=512)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_quantized_bytes_and_relative_error(wide_llama):
    x = torch.randn(2, 12, 256, generator=torch.Generator().manual_seed(0))
    full = load_blocks(wide_llama, 0, 8, progress=False, linear_kernel="torch")
    ref = full(x)
    sizes, errors = {}, {}
    for mode in ("int8", "nf4"):
        span = load_blocks(wide_llama, 0, 8, progress=False, quant=mode)
        assert span.quant == mode
        sizes[mode] = span.weight_bytes() / full.weight_bytes()
        errors[mode] = _rel(span(x), ref)
    print(f"\nweight bytes vs float32: {sizes}; output relative error vs float32 (8 random layers): {errors}")
    assert 0.24 < sizes["int8"] < 0.30 and 0.11 < sizes["nf4"] < 0.16
    assert errors["int8"] < 0.1 and errors["int8"] < errors["nf4"] / 3


def test_honest_hosters_of_one_class_agree_and_nf4_claiming_int8_is_caught(wide_llama):
    """Two independent int8 loads are bit-identical; nf4 lies far outside that class's spread."""
    x = torch.randn(1, 8, 256, generator=torch.Generator().manual_seed(1))
    a = load_blocks(wide_llama, 2, 6, progress=False, quant="int8")(x)
    b = load_blocks(wide_llama, 2, 6, progress=False, quant="int8")(x)
    liar = load_blocks(wide_llama, 2, 6, progress=False, quant="nf4")(x)
    assert torch.equal(a, b)
    assert _rel(liar, a) > 1e-2  # scoring tolerances are ~1e-3 relative: the liar scores ~0 in class int8


def test_quantized_cache_decode_matches_its_own_prefill(wide_llama):
    span = load_blocks(wide_llama, 0, 4, progress=False, quant="int8")
    x = torch.randn(1, 10, 256, generator=torch.Generator().manual_seed(2))
    whole = span(x)
    cache = span.new_cache()
    steps = [span(x[:, :6], cache=cache)] + [span(x[:, i:i + 1], cache=cache) for i in range(6, 10)]
    torch.testing.assert_close(torch.cat(steps, 1), whole, rtol=1e-4, atol=1e-4)


def test_modes_and_devices_fail_in_one_line():
    assert parse_quant(None) == "none" and parse_quant("INT8") == "int8"
    with pytest.raises(QuantError, match="unknown --quant 'int4'"):
        parse_quant("int4")
    assert check_quant("int8", torch.float32, "cpu") == "int8"
    with pytest.raises(QuantError) as err:
        check_quant("nf4", torch.float32, "cuda:7" if not torch.cuda.is_available() else "meta")
    assert "--quant nf4 cannot run" in str(err.value) and "\n" not in str(err.value)


def test_tensor_bytes_sees_inside_quantized_tensors():
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    layer = torch.nn.Linear(128, 64, bias=False)
    assert tensor_bytes(layer.weight) == 128 * 64 * 4
    quantize_(layer, Int8WeightOnlyConfig())
    assert 128 * 64 <= tensor_bytes(layer.weight) <= 128 * 64 + 64 * 8  # int8 data + per-row scales


def test_nf4_leaves_layers_without_whole_scale_blocks_in_dtype():
    from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import NF4Tensor

    from subnet.model.quant import quantize_module

    odd, even = torch.nn.Linear(344, 128, bias=False), torch.nn.Linear(256, 256, bias=False)
    quantize_module(odd, "nf4")
    quantize_module(even, "nf4")
    assert type(odd.weight.data) is torch.Tensor and isinstance(even.weight.data, NF4Tensor)
