"""Linear-layer kernels for CPU float32: the decode hot path's matrix products.

Decode multiplies 1 to a few dozen rows by every weight of a block, once per token, so the
products mostly stream weights from memory. `F.linear` (what transformers calls: torch's MKL
sgemm on a transposed view) multiplies one row at 11-12 GB/s on this 2-vCPU AMD EPYC VM with
1 or 2 threads, although the same cores stream 23-29 GB/s. Two kernels do better
(`benchmarks/kernels.py`; docs/BENCHMARKS.md has the table):

- `onednn` (the default): `PackedLinear`, the weight reordered once into oneDNN's blocked
  layout (`mkldnn::_reorder_linear_weight` + `mkldnn::_linear_pointwise`, the op pair
  PyTorch's inductor uses when it freezes a CPU model). Best for batches: a 12-layer decode
  step of 8 sequences runs at 1.22x (model a) / 1.47x (model b) the speed of `F.linear`,
  one sequence at 0.86x / 1.07x. The reordered copy replaces the weight (same bytes).
- `blas`: `BlasLinear`, `numpy.matmul` (numpy's bundled OpenBLAS) on the module's own weight,
  zero copy (a checkpoint's memory map stays shared), on as many threads as torch uses. Best
  for one sequence: the same step at 0.99x (a) / 1.37x (b) the speed of `F.linear`, 8
  sequences at 1.03x / 1.33x.
- `torch`: plain `nn.Linear`.

The default is `onednn` because a hoster's throughput under concurrent sessions is what it
is paid for (8 sessions on one hoster: 3.8-4.9x one session with `onednn`, 2.6-3.4x with
`blas`); `blas` suits a hoster or client that mostly serves one sequence at a time. Choose per
process with MESH_LINEAR_KERNEL, or per call site (`hoster --linear-kernel`, `load_blocks`).

Only the kernel changes: the modules around it are still transformers' own classes, which
call `self.q_proj(x)` and never read `.weight`. Results differ from `F.linear` only by
float32 rounding (another summation order). Anything a kernel cannot serve (other dtypes,
GPUs, a missing library or CPU instruction) keeps `nn.Linear`.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import weakref

import numpy as np
import torch
from torch import nn

from subnet.model.names import KERNELS

log = logging.getLogger(__name__)

ENV_KERNEL = "MESH_LINEAR_KERNEL"
DEFAULT_KERNEL = "onednn"


def linear_kernel(requested: str | None = None) -> str:
    """The kernel to use: `requested`, else MESH_LINEAR_KERNEL, else `DEFAULT_KERNEL`; unknown names raise."""
    name = (requested or os.environ.get(ENV_KERNEL) or DEFAULT_KERNEL).strip().lower()
    if name not in KERNELS:
        raise ValueError(f"unknown linear kernel {name!r} (from {'argument' if requested else ENV_KERNEL}); "
                         f"choose one of {', '.join(KERNELS)}")
    return name


def kernel_supported(kernel: str, dtype: torch.dtype, device: torch.device | str) -> bool:
    """Whether `kernel` can serve weights of `dtype` on `device` in this process."""
    if torch.device(device).type != "cpu":
        return kernel == "torch"
    if kernel == "blas":
        return dtype == torch.float32 and _Blas.get() is not None
    if kernel == "onednn":
        return (dtype == torch.float32 and torch.backends.mkldnn.is_available()
                and hasattr(torch.ops.mkldnn, "_linear_pointwise")
                and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))
    return kernel == "torch"


def replaces_weights(kernel: str) -> bool:
    """Whether `kernel` holds its own copy of each weight (so loaders should read copies and free
    the originals layer by layer) rather than using the loaded tensor as it is."""
    return kernel == "onednn"


def effective_kernel(requested: str | None, dtype: torch.dtype, device: torch.device | str) -> str:
    """`linear_kernel(requested)` if it can serve `dtype` on `device`, else `torch`."""
    kernel = linear_kernel(requested)
    return kernel if kernel_supported(kernel, dtype, device) else "torch"


class _Blas:
    """numpy's OpenBLAS, found through threadpoolctl, and a per-thread thread-count switch."""

    _instance: _Blas | None = None
    _probed = False
    _lock = threading.Lock()

    def __init__(self, controller) -> None:
        self.controller = controller
        lib = controller.dynlib
        # Thread-local in OpenBLAS >= 0.3.27; the process-wide setter otherwise.
        self._set = getattr(lib, "openblas_set_num_threads_local", None) or controller.set_num_threads
        self._current = threading.local()

    @classmethod
    def get(cls) -> _Blas | None:
        """The OpenBLAS numpy multiplies with, or None (numpy built against another BLAS)."""
        with cls._lock:
            if not cls._probed:
                cls._probed = True
                try:
                    from threadpoolctl import ThreadpoolController

                    found = ThreadpoolController().select(internal_api="openblas").lib_controllers
                    cls._instance = cls(found[0]) if found else None
                    reason = "numpy does not multiply with OpenBLAS here"
                except Exception as e:  # noqa: BLE001 - no controllable OpenBLAS: keep torch's kernels
                    reason = f"numpy's OpenBLAS is not controllable: {e}"
                if cls._instance is None:
                    log.info("%s; the blas kernel is unavailable", reason)
            return cls._instance

    def threads(self, n: int) -> None:
        """Use `n` BLAS threads for this thread's next products (a no-op when already so)."""
        if getattr(self._current, "n", None) != n:
            self._set(n)
            self._current.n = n


class BlasLinear(nn.Module):
    """`y = x W^T + b` through numpy's OpenBLAS on the unchanged weight tensor (inference only)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        blas = _Blas.get()
        if blas is None:
            raise RuntimeError("numpy has no OpenBLAS to run BlasLinear with")
        self._blas = blas
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight if not linear.weight.requires_grad else nn.Parameter(
            linear.weight.detach(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or x.device.type != "cpu" or x.requires_grad:
            raise TypeError(f"BlasLinear serves float32 CPU inputs without autograd, got {x.dtype} on {x.device}")
        weight = self.weight if self.weight.is_contiguous() else self.weight.contiguous()
        rows = x.reshape(-1, self.in_features)
        if not rows.is_contiguous():
            rows = rows.contiguous()
        out = torch.empty(rows.shape[0], self.out_features, dtype=torch.float32)
        self._blas.threads(torch.get_num_threads())
        np.matmul(rows.numpy(), weight.numpy().T, out=out.numpy())
        if self.bias is not None:
            out += self.bias
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


# Packed weights by handle, for graphs compiled with torch.compile (see `packed_linear`). A module's entry
# goes with the module (weakref.finalize), so a hoster that loads a new span does not keep the old weights.
_PACKED: dict[int, tuple[torch.Tensor, int]] = {}
_HANDLES = itertools.count()


@torch.library.custom_op("mesh_node::packed_linear", mutates_args=())
def packed_linear(x: torch.Tensor, handle: int, bias: torch.Tensor | None) -> torch.Tensor:
    """`PackedLinear` as one opaque op: torch.compile cannot trace oneDNN's blocked weight tensor
    itself, but it can call this op (the handle is a constant of the graph) and fuse everything
    around it; a compiled decode step then multiplies on oneDNN instead of `F.linear` (the 84
    products of a model (a) step: 8.2 vs 13.5 ms for one row, 8.4 vs 20.1 ms for eight;
    docs/BENCHMARKS.md, eighth session)."""
    packed, _ = _PACKED[handle]
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


@packed_linear.register_fake
def _packed_linear_shape(x: torch.Tensor, handle: int, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], _PACKED[handle][1])


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
        self.handle = next(_HANDLES)
        _PACKED[self.handle] = (self.packed, self.out_features)
        weakref.finalize(self, _PACKED.pop, self.handle, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or x.device.type != "cpu":
            raise TypeError(f"PackedLinear serves float32 CPU inputs, got {x.dtype} on {x.device}")
        if torch.compiler.is_compiling():  # ~0.3 us a call eagerly: 24 us of a model (a) step's 84 products
            return packed_linear(x, self.handle, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")  # no op dispatch

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


_CLASSES = {"blas": BlasLinear, "onednn": PackedLinear}


def convert_linear(linear: nn.Linear, kernel: str | None = None) -> nn.Module:
    """`linear` running on `kernel` (see `linear_kernel`) when supported, else `linear` itself."""
    kernel = effective_kernel(kernel, linear.weight.dtype, linear.weight.device)
    if kernel == "torch":
        return linear
    try:
        return _CLASSES[kernel](linear)
    except RuntimeError as e:  # the op exists but this CPU/build cannot run it
        log.info("%s linear unavailable, keeping nn.Linear: %s", kernel, e)
        return linear


def convert_linears(module: nn.Module, kernel: str | None = None) -> int:
    """Replace every `nn.Linear` inside `module` by the `kernel` version; returns how many.

    A weight shared with another module (a tied LM head) stays shared for `blas` and is
    packed as a copy for `onednn`. A layer that cannot convert is left as it was.
    """
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear:
                continue
            converted = convert_linear(child, kernel)
            if converted is not child:
                setattr(parent, name, converted)
                replaced += 1
    return replaced


def packed_bytes(module: nn.Module) -> int:
    """Bytes of the weights held packed inside `module` (parameters() no longer sees them)."""
    return sum(m.weight_nbytes for m in module.modules() if isinstance(m, PackedLinear))
