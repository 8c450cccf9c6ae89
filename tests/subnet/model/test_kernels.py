"""Linear kernels: same products as nn.Linear (to float32 rounding), same bytes, choices and opt-outs work."""

from __future__ import annotations

import gc
import shutil
import sys
import threading

import pytest
import torch
from torch import nn

from subnet.model.blocks import load_blocks
from subnet.model.kernels import (
    BlasLinear,
    PackedLinear,
    _Blas,
    convert_linear,
    convert_linears,
    kernel_supported,
    linear_kernel,
)

KERNEL_CLASSES = {"blas": BlasLinear, "onednn": PackedLinear}
needs = {k: pytest.mark.skipif(not kernel_supported(k, torch.float32, "cpu"), reason=f"{k} kernel unavailable here")
         for k in KERNEL_CLASSES}
KERNELS = [pytest.param(k, marks=needs[k]) for k in KERNEL_CLASSES]


def _linear(bias: bool, seed: int = 0) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(64, 176, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(176, 64, generator=g))
        if bias:
            lin.bias.copy_(torch.randn(176, generator=g))
    return lin


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 64), (8, 64), (3, 5, 64), (2, 300, 64), (1, 1, 64)])
def test_kernel_equals_linear(kernel, shape, bias):
    lin = _linear(bias)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    fast = KERNEL_CLASSES[kernel](lin)
    with torch.inference_mode():
        y = fast(x)
        assert y.shape == (*shape[:-1], 176)
        torch.testing.assert_close(y, lin(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast(x), y, rtol=0, atol=0)  # deterministic for the same input


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_reads_non_contiguous_inputs(kernel):
    lin = _linear(True)
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(2)).t()  # rows are strided
    with torch.inference_mode():
        torch.testing.assert_close(KERNEL_CLASSES[kernel](lin)(x), lin(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_rejects_other_dtypes(kernel):
    fast = KERNEL_CLASSES[kernel](nn.Linear(8, 8))
    with pytest.raises(TypeError, match="float32"):
        fast(torch.randn(1, 8, dtype=torch.bfloat16))


@needs["blas"]
def test_blas_linear_shares_the_weight_and_rejects_autograd():
    lin = _linear(False)
    fast = BlasLinear(lin)
    assert fast.weight.data_ptr() == lin.weight.data_ptr()  # zero copy: no second weight in memory
    with pytest.raises(TypeError, match="autograd"):
        fast(torch.randn(1, 64, requires_grad=True))


@needs["blas"]
def test_blas_threads_follow_torch_per_calling_thread():
    """Products run on torch's thread count as set in the calling thread (OpenBLAS's own default may differ)."""
    blas = _Blas.get()
    fast = BlasLinear(_linear(False))
    seen: dict[int, int | None] = {}

    def run(threads: int) -> None:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            fast(torch.randn(1, 64))
        seen[threads] = blas._current.n

    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            t = threading.Thread(target=run, args=(threads,))
            t.start()
            t.join()
    finally:
        torch.set_num_threads(before)
    assert seen == {1: 1, 2: 2}


@pytest.mark.parametrize("kernel", KERNELS)
def test_span_converts_every_linear_and_keeps_outputs(tiny_llama, kernel):
    plain = load_blocks(tiny_llama, 0, 4, progress=False, linear_kernel="torch")
    fast = load_blocks(tiny_llama, 0, 4, progress=False, linear_kernel=kernel)
    linears = [m for m in fast.modules() if isinstance(m, nn.Linear)]
    assert linears == [] and sum(isinstance(m, KERNEL_CLASSES[kernel]) for m in fast.modules()) == 4 * 7
    assert fast.weight_bytes() == plain.weight_bytes()
    x = torch.randn(2, 9, plain.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-5)


@needs["blas"]
@needs["onednn"]
def test_default_kernel_env_choice_and_unsupported_dtype(tiny_llama, monkeypatch):
    monkeypatch.delenv("MESH_LINEAR_KERNEL", raising=False)
    assert linear_kernel() == "onednn"
    default = load_blocks(tiny_llama, 0, 1, progress=False)
    assert sum(isinstance(m, PackedLinear) for m in default.modules()) == 7
    monkeypatch.setenv("MESH_LINEAR_KERNEL", "blas")
    chosen = load_blocks(tiny_llama, 0, 1, progress=False)
    assert sum(isinstance(m, BlasLinear) for m in chosen.modules()) == 7
    bf16 = load_blocks(tiny_llama, 0, 1, "bfloat16", progress=False)
    assert not any(isinstance(m, (BlasLinear, PackedLinear)) for m in bf16.modules())  # stays nn.Linear
    monkeypatch.setenv("MESH_LINEAR_KERNEL", "torch")
    span = load_blocks(tiny_llama, 0, 1, progress=False)
    assert not any(isinstance(m, (BlasLinear, PackedLinear)) for m in span.modules())
    assert convert_linears(nn.Sequential(nn.Linear(4, 4))) == 0
    lin = nn.Linear(4, 4)
    assert convert_linear(lin, "blas") is not lin  # an explicit choice wins over the environment
    monkeypatch.setenv("MESH_LINEAR_KERNEL", "fast")
    with pytest.raises(ValueError, match="unknown linear kernel 'fast'.*blas, onednn, torch"):
        load_blocks(tiny_llama, 0, 1, progress=False)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
@pytest.mark.parametrize("kernel,stays_mapped", [pytest.param("onednn", False, marks=needs["onednn"]),
                                                 pytest.param("blas", True, marks=needs["blas"]),
                                                 ("torch", True)])
def test_which_kernels_keep_the_checkpoint_mapped(tiny_llama, tmp_path, kernel, stays_mapped):
    """Packed weights are copies (the checkpoint's pages must not stay resident next to them);
    the others use the memory-mapped tensors themselves (no copy at all)."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_llama, ckpt)
    weights = str(ckpt / "model.safetensors")

    def mapped() -> bool:
        gc.collect()
        return weights in open("/proc/self/maps").read()

    span = load_blocks(ckpt, 0, 2, progress=False, linear_kernel=kernel)
    assert mapped() == stays_mapped and span.weight_bytes() > 0
    del span
    assert not mapped()
