"""Shared value generators for the scoring tests (also run in a subprocess)."""

from __future__ import annotations

import numpy as np

SHAPE = (1, 4, 16)


def make_outputs(seed: int, n_hosters: int, n_blocks: int, noise: float = 1e-7) -> dict[str, dict[int, np.ndarray]]:
    """Honest-looking outputs: a shared truth per block plus tiny per-hoster noise; ranges overlap."""
    rng = np.random.default_rng(seed)
    truth = {b: rng.standard_normal(SHAPE).astype(np.float32) for b in range(n_blocks)}
    out: dict[str, dict[int, np.ndarray]] = {}
    for _ in range(n_hosters):
        start = int(rng.integers(0, n_blocks))
        end = int(rng.integers(start + 1, n_blocks + 1))
        peer = f"12D3Koo{rng.integers(0, 10**9):09d}"
        out[peer] = {
            b: (truth[b] + noise * rng.standard_normal(SHAPE)).astype(np.float32) for b in range(start, end)
        }
    return out
