"""Weight-only quantization of a hoster's blocks (`--quant int8|nf4|none`), through torchao.

Only the linear layers' weights are quantized; activations, norms, the KV cache and the
client's embeddings/head keep the hoster's `--dtype`. torchao 0.18 runs both modes on CPU
and CUDA with one API (`quantize_`):

- `int8`: `Int8WeightOnlyConfig` (per-output-channel int8 weights, `Int8Tensor`); ~1/4 of
  float32 weight bytes.
- `nf4`: `NF4WeightOnlyConfig` (QLoRA's 4-bit NormalFloat, blocks of 64 with double-quantized
  scales, `NF4Tensor`); ~1/7 of float32 weight bytes. On CPU its linear dequantizes the whole
  weight every call: it saves memory, not time (benchmarks/quant.py).

Why torchao and not bitsandbytes 0.50.2 (both install next to torch 2.13.0; measured on this
2-vCPU VM under load from other jobs, a 1024x2816 + 2816x1024 MLP, one row): bitsandbytes'
int8 (`Linear8bitLt`) quantizes the activations too (LLM.int8, inputs cast to float16 on CPU):
not weight-only, and 2x the output error of torchao's int8 (0.012 vs 0.0056 relative); and its
CPU backend, on import, tries to fetch and run a kernel from the Hugging Face hub
(`kernels-community/quantization-bitsandbytes`), which a hoster must never do. Its nf4 is
~10x faster than torchao's on CPU (10.5 vs 113 ms); torchao's is the memory-saving path.

MoE experts (stacked 3-D parameters, not `nn.Linear`) stay in `--dtype`, and so do, with `nf4`,
linear layers whose size is not a multiple of 64 x 256 values (torchao's NF4 block structure).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from subnet.model.names import QUANT_MODES


class QuantError(ValueError):
    """The requested quantization cannot run here (library missing, device or dtype unsupported)."""


def parse_quant(mode: str | None) -> str:
    mode = (mode or "none").strip().lower()
    if mode not in QUANT_MODES:
        raise QuantError(f"unknown --quant {mode!r}; choose one of {', '.join(QUANT_MODES)}")
    return mode


def _import_torchao() -> None:
    """Import torchao without its start-up warnings about CUDA-only kernels a CPU torch cannot load."""
    logger = logging.getLogger("torchao")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import torchao  # noqa: F401
    finally:
        logger.setLevel(level)


def _config(mode: str):
    try:
        _import_torchao()
        if mode == "int8":
            from torchao.quantization import Int8WeightOnlyConfig

            return Int8WeightOnlyConfig()
        from torchao.prototype._nf4tensor_api import NF4WeightOnlyConfig

        return NF4WeightOnlyConfig()
    except ImportError as e:
        raise QuantError(f"--quant {mode} needs torchao (pip install 'torchao==0.18.0'): {e}") from None


NF4_GROUP = 64 * 256  # torchao's NF4: blocks of 64 values, scales double-quantized in blocks of 256


def _is_linear(module: nn.Module, fqn: str) -> bool:
    return type(module) is nn.Linear


def _nf4_fits(module: nn.Module, fqn: str) -> bool:
    """NF4 needs a weight size that divides into whole scale blocks; other linears keep `--dtype`."""
    return _is_linear(module, fqn) and module.weight.numel() % NF4_GROUP == 0


def quantize_module(module: nn.Module, mode: str) -> nn.Module:
    """Quantize every `nn.Linear` weight of `module` in place (`mode` none: unchanged)."""
    mode = parse_quant(mode)
    if mode == "none":
        return module
    config = _config(mode)
    from torchao.quantization import quantize_

    quantize_(module, config, filter_fn=_nf4_fits if mode == "nf4" else _is_linear)
    return module


def check_quant(mode: str, dtype: torch.dtype, device: str | torch.device) -> str:
    """Quantize and run a small linear layer on `device` now: a one-line QuantError if it cannot.

    Called before a hoster loads anything, so a mode this machine cannot run never gets announced.
    """
    mode = parse_quant(mode)
    if mode == "none":
        return mode
    try:
        layer = nn.Linear(256, 256, bias=False, device=device, dtype=dtype)
        with torch.inference_mode():
            nn.init.normal_(layer.weight, std=0.05)
            x = torch.randn(2, 256, device=device, dtype=dtype)
            quantize_module(layer, mode)
            y = layer(x)
        if y.shape != (2, 256) or not torch.isfinite(y).all():
            raise RuntimeError("non-finite output")
    except QuantError:
        raise
    except Exception as e:  # any library/device failure: name it in one line
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise QuantError(f"--quant {mode} cannot run with --dtype {str(dtype).replace('torch.', '')} on "
                         f"{device} here: {first}") from None
    return mode


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor really holds: the inner tensors of a quantized tensor subclass, else numel x size."""
    flatten = getattr(type(t), "__tensor_flatten__", None)
    if flatten is not None and type(t) not in (torch.Tensor, nn.Parameter):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters, quantized tensors at their real size."""
    return sum(tensor_bytes(p) for p in module.parameters())
