"""Names of the model layer's choices (kernels, weight dtypes), importable without torch.

`mesh-node` builds every command's parser from these: importing torch (~1-2 s) only to list
them would slow down `mesh-node --help`, `--version` and `keygen`.
"""

from __future__ import annotations

from consensus.precision import QUANT_MODES  # noqa: F401 (weight-only modes; subnet.model.quant implements each)

KERNELS = ("blas", "onednn", "torch")  # subnet.model.kernels implements each
DTYPE_NAMES = ("float32", "bfloat16", "float16")  # subnet.model.blocks.DTYPES maps them to torch
