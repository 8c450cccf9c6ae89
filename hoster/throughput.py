"""A hoster's measured decode speed: what it announces as throughput (and what routing compares
with the step times clients measure), from real steps through its own span at start-up."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from hoster.cache import KVCache, SessionKV
from subnet.model.blocks import BlockSpan


def measure_decode(span: BlockSpan, new_kv: Callable[..., SessionKV], run: Callable[..., torch.Tensor],
                   steps: int = 16, prefix: int = 16) -> float:
    """Decode tokens/s of the full span for one sequence: median step time after a warm-up.
    `new_kv(start, end, batch, max_length)` and `run(x, cache, kv, start, end)` are the backend's own,
    so the measured step is the served one (compiled where the backend would compile it)."""
    kv = new_kv(span.start, span.end, 1, prefix + steps + 2)
    cache = KVCache(kv)
    h = torch.randn(1, prefix, span.hidden_size, generator=torch.Generator().manual_seed(0))
    h = h.to(span.device, span.dtype)
    span(h, cache=cache)
    kv.length += prefix
    x = h[:, -1:]
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        kv.reserve(kv.length + 1)
        x = run(x, cache, kv, span.start, span.end)
        kv.length += 1
        if span.device.type == "cuda":
            torch.cuda.synchronize(span.device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    times.sort()
    return 1.0 / max(times[len(times) // 2], 1e-9)
