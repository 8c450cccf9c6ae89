"""Packed oneDNN linear layers for CPU float32: the decode hot path's matrix products.

Decode multiplies 1 to a few dozen rows by every weight of a block, once per token. For
these skinny products `F.linear` (MKL sgemm on a transposed view) reaches well under
half of this CPU's memory bandwidth; oneDNN with the weight reordered ONCE into its
blocked layout (the same op pair PyTorch's inductor uses when it freezes a CPU model:
`mkldnn::_reorder_linear_weight` + `mkldnn::_linear_pointwise`) was measured 1.0-1.8x
faster per call on the benchmark models' shapes for one row and 1.05-2.8x for eight; over a
whole decode step 1.05x for one sequence and 1.2-1.6x for a batch of eight
(`benchmarks/kernels.py`). Each call has more fixed cost than `F.linear`, so tiny matrices
(hidden 128) get slower; see docs/BENCHMARKS.md for what that does inside a chain.

Only the kernel changes: the modules around it are still transformers' own classes, which
call `self.q_proj(x)` etc. and never read `.weight`. Results differ from `F.linear` only by
float32 rounding (another summation order), within 1e-5 relative. The packed weight
replaces the original (same bytes), so memory does not grow. Anything this cannot serve
(other dtypes, GPUs, a torch without oneDNN, CPUs without the needed instructions) keeps
`nn.Linear`. `MESH_PACKED_LINEARS=0` turns packing off for a process.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

log = logging.getLogger(__name__)

ENV_SWITCH = "MESH_PACKED_LINEARS"


def packing_enabled() -> bool:
    """False when the operator set MESH_PACKED_LINEARS=0 (or false/no/off)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in {"0", "false", "no", "off"}


def packing_supported(dtype: torch.dtype, device: torch.device | str) -> bool:
    """float32 on a CPU with oneDNN and the two ops present in this torch build."""
    return (torch.device(device).type == "cpu" and dtype == torch.float32
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


class PackedLinear(nn.Module):
    """`y = x W^T + b` with W held in oneDNN's blocked layout (no `.weight`: it no longer exists)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        # An opaque oneDNN tensor: kept as a plain attribute so that `.to()`, `state_dict()` and
        # parameter counting never try to view it as a strided tensor.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        self.weight_nbytes = weight.numel() * weight.element_size()
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or x.device.type != "cpu":
            raise TypeError(f"PackedLinear serves float32 CPU inputs, got {x.dtype} on {x.device}")
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def pack_linears(module: nn.Module) -> int:
    """Replace every `nn.Linear` inside `module` by a `PackedLinear` when supported; returns how many.

    A weight shared with another module (a tied LM head) is packed as a copy; the sharing
    module keeps the original. A failure to pack (e.g. missing CPU instructions) leaves the
    layer as it was.
    """
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear:
                continue
            packed = pack_linear(child)
            if packed is not child:
                setattr(parent, name, packed)
                replaced += 1
    return replaced


def pack_linear(linear: nn.Linear) -> nn.Module:
    """`linear` as a `PackedLinear` when enabled and supported, else `linear` itself."""
    if not packing_enabled() or not packing_supported(linear.weight.dtype, linear.weight.device):
        return linear
    try:
        return PackedLinear(linear)
    except RuntimeError as e:  # the op exists but this CPU/build cannot run it
        log.info("packed linear unavailable, keeping nn.Linear: %s", e)
        return linear


def packed_bytes(module: nn.Module) -> int:
    """Bytes of the weights held packed inside `module` (parameters() no longer sees them)."""
    return sum(m.weight_nbytes for m in module.modules() if isinstance(m, PackedLinear))
