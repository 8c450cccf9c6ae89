"""The memory-bandwidth ceiling of greedy decoding on this machine: no framework can beat it.

A one-row decode step must read every weight it multiplies by from memory once (the weights
of a real model, and of models (a) and (b), are far larger than the CPU caches). So

    ceiling tokens/s = measured read bandwidth (bytes/s) / weight bytes read per token.

Bytes read per token (`weight_bytes_per_token`), from the checkpoint's tensor shapes at the
served dtype (fp32 here):
  - every decoder layer's tensors (q/k/v/o, gate/up/down, both norms): all blocks a chain serves;
  - the final norm and the LM head (`vocab x hidden`; a tied head is the embedding matrix);
  - one row of the embedding matrix (the token being fed; not the whole matrix).
Not counted: the K/V cache read by attention (2 x layers x kv_heads x head_dim x positions;
`kv_bytes_per_token` gives it, under 1.5% of the weights at the benchmarks' lengths) and
activations (kilobytes). Both would only lower the ceiling.

Bandwidth (`measure_bandwidth`), STREAM-style, in this process with its 2 torch threads like
every timed row: a 256 MiB float32 tensor (far beyond the L3 cache), best of several runs of
  - sum:   `x.sum()`                      bytes = size of x,
  - mv:    `torch.mv(x.view(rows, 8192), v)` bytes = size of x (exactly a decode step's product:
           a weight matrix times one activation row),
  - copy:  `y.copy_(x)`                   bytes = 2 x size (read + write, as STREAM counts it).
The ceiling uses the read bandwidth, the faster of sum and mv: a decode step reads its weights
and writes almost nothing. (Measured here on 2026-12-04: sum 14-19 GB/s, mv 22-31 GB/s, copy 12-18, at low load.)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_MIB = 256


@dataclass(frozen=True)
class Bandwidth:
    """Best-of-`runs` bandwidths in bytes/s."""

    sum: float
    mv: float
    copy: float
    mib: int
    runs: int

    @property
    def read(self) -> float:
        """The read bandwidth the ceiling uses: the faster read kernel."""
        return max(self.sum, self.mv)

    def as_dict(self) -> dict:
        return {"read_GBps": self.read / 1e9, "sum_GBps": self.sum / 1e9, "mv_GBps": self.mv / 1e9,
                "copy_GBps": self.copy / 1e9, "tensor_MiB": self.mib, "runs": self.runs}


def bandwidth_from_times(nbytes: int, seconds: list[float]) -> float:
    """Bytes/s of the fastest of several runs that each moved `nbytes` (best of N, as STREAM reports)."""
    if not seconds or min(seconds) <= 0:
        raise ValueError("need positive run times")
    return nbytes / min(seconds)


def measure_bandwidth(mib: int = DEFAULT_MIB, runs: int = 7) -> Bandwidth:
    """Read (sum, matrix-vector) and copy bandwidth of a `mib` MiB float32 tensor on this process's threads."""
    cols = 8192
    n = mib * 2**20 // 4 // cols * cols
    x = torch.ones(n, dtype=torch.float32)
    m, v = x.view(-1, cols), torch.ones(cols)
    y = torch.empty_like(x)
    y.copy_(x)  # touch every page first: the timed runs measure memory, not page faults
    times: dict[str, list[float]] = {"sum": [], "mv": [], "copy": []}
    kernels = {"sum": x.sum, "mv": lambda: torch.mv(m, v), "copy": lambda: y.copy_(x)}
    for _ in range(runs):  # interleaved, so a slow phase of the machine hits every kernel
        for name, fn in kernels.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    nbytes = n * 4
    return Bandwidth(bandwidth_from_times(nbytes, times["sum"]), bandwidth_from_times(nbytes, times["mv"]),
                     bandwidth_from_times(2 * nbytes, times["copy"]), mib, runs)


def _shapes(model_dir: str | Path) -> dict[str, tuple[list[int], str]]:
    """Tensor name -> (shape, dtype string) from the safetensors headers (no tensor data read)."""
    from safetensors import safe_open

    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() \
        else ["model.safetensors"]
    out = {}
    for name in files:
        with safe_open(str(model_dir / name), framework="pt") as f:
            for key in f.keys():
                sl = f.get_slice(key)
                out[key] = (list(sl.get_shape()), sl.get_dtype())
    return out


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def weight_bytes_per_token(model_dir: str | Path, element_size: int = 4) -> dict[str, int]:
    """Bytes of weights one greedy decode step reads, by part (see the module docstring) and in total."""
    from subnet.model.blocks import load_config

    config = load_config(model_dir)
    shapes = _shapes(model_dir)
    layers = sum(_numel(s) for k, (s, _) in shapes.items() if ".layers." in k or k.startswith("layers."))
    norm = sum(_numel(s) for k, (s, _) in shapes.items() if k.endswith("norm.weight") and ".layers." not in k)
    if "lm_head.weight" in shapes:
        head = _numel(shapes["lm_head.weight"][0])
    else:  # tied: the head is the embedding matrix
        head = config.vocab_size * config.hidden_size
    parts = {"blocks": layers * element_size, "final_norm": norm * element_size, "lm_head": head * element_size,
             "embedding_row": config.hidden_size * element_size}
    parts["total"] = sum(parts.values())
    return parts


def kv_bytes_per_token(config, positions: float, element_size: int = 4) -> float:
    """Bytes of K/V attention reads in one decode step over `positions` cached positions (all layers)."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * heads * head_dim * positions * element_size


def ceiling_tokens_per_s(bandwidth_bytes_per_s: float, bytes_per_token: int) -> float:
    """Tokens/s if every decode step only streamed its weights once at the measured bandwidth."""
    if bytes_per_token <= 0:
        raise ValueError("bytes per token must be positive")
    return bandwidth_bytes_per_s / bytes_per_token


def ceiling_row(model_dir: str | Path, bandwidth: Bandwidth) -> dict:
    """The ceiling of `model_dir`'s greedy decoding at `bandwidth`, with what was counted."""
    parts = weight_bytes_per_token(model_dir)
    return {"bytes_per_token": parts, "bandwidth": bandwidth.as_dict(),
            "tokens_per_s": ceiling_tokens_per_s(bandwidth.read, parts["total"]),
            "ms_per_token": parts["total"] / bandwidth.read * 1000}
