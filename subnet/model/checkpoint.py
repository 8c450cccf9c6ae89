"""Read named tensors from a local safetensors checkpoint (sharded or single-file), and only those.

Damaged files (a bad header, truncated data) end in one-line `CheckpointError`s naming the file.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable

import torch

from subnet.model.architectures import CheckpointError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class WeightIndex:
    """Tensor name -> safetensors file of a local checkpoint (sharded or single-file)."""

    def __init__(self, directory: str):
        from safetensors import safe_open

        self.directory = directory
        index = os.path.join(directory, INDEX_FILE)
        single = os.path.join(directory, SINGLE_FILE)
        if os.path.exists(index):
            with open(index) as f:
                self.weight_map: dict[str, str] = dict(json.load(f)["weight_map"])
        elif os.path.exists(single):
            with _readable(single):
                with safe_open(single, framework="pt") as f:
                    self.weight_map = {k: SINGLE_FILE for k in f.keys()}
        else:
            raise CheckpointError(f"no {SINGLE_FILE} or {INDEX_FILE} in {directory} (safetensors required)")

    def names(self) -> list[str]:
        return list(self.weight_map)

    def load(self, names: Iterable[str], dtype: torch.dtype, device: torch.device,
             copy: bool = False) -> dict[str, torch.Tensor]:
        """Read exactly `names` (grouped by shard file), cast to `dtype`, move to `device`.

        Without `copy` a tensor may point into the file's memory map (zero-copy: its pages stay
        file-backed and shareable). `copy` makes every tensor its own memory, so the map is
        closed on return: for weights that are about to be repacked and dropped.
        """
        from safetensors import safe_open

        by_file: dict[str, list[str]] = {}
        for n in names:
            if n not in self.weight_map:
                raise CheckpointError(f"tensor {n!r} not in checkpoint {self.directory}")
            by_file.setdefault(self.weight_map[n], []).append(n)
        out: dict[str, torch.Tensor] = {}
        for file, file_names in by_file.items():
            path = os.path.join(self.directory, file)
            if not os.path.exists(path):
                raise CheckpointError(f"missing shard {file} in {self.directory}")
            with _readable(path), safe_open(path, framework="pt", device="cpu") as f:
                for n in file_names:
                    out[n] = f.get_tensor(n).to(device=device, dtype=dtype, copy=copy)
        return out


@contextlib.contextmanager
def _readable(path: str):
    """Turn safetensors' errors on a damaged file (bad header, truncated data) into one-line CheckpointErrors."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as e:  # SafetensorError, OSError, or a RuntimeError from a short read
        if type(e).__name__ not in ("SafetensorError", "OSError", "RuntimeError", "ValueError"):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({first})") from None
