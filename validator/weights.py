"""The validator's one copy of the model: blocks and embedding loaded once, on first use.

A validator holding the weights uses them three ways: references of the probe blocks
(`validator/reference.py`), recomputing evidence (`validator/evidence.py`) and spot checks
(`validator/spot_checks.py`). Each used to load its own copy of every block; a node now
creates one `ValidatorWeights` and hands it to all three, so the blocks sit in memory once.
Loading is lazy (a validator that never needs them never loads them) and computing is
serialized by one lock (the three users are background duties; none is latency-critical).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

from subnet.model.blocks import load_blocks, load_client_parts

# blocks [start, end) on `prefix` [batch, P, hidden], positions 0..P-1, causal, float32 out
Reference = Callable[[torch.Tensor, int, int], torch.Tensor]
Embed = Callable[[torch.Tensor], torch.Tensor]  # token ids [1, T] -> embeddings [1, T, hidden]


class ValidatorWeights:
    """Blocks `[0, num_blocks)` in `dtype` and the embedding table of `model_path`, each loaded at most once."""

    def __init__(self, model_path: str, num_blocks: int, dtype: str = "float32"):
        self.model_path, self.num_blocks, self.dtype = model_path, num_blocks, dtype
        self.lock = threading.RLock()  # held while loading and while computing
        self._blocks = None
        self._embed = None
        self.loads = 0  # how many times anything was loaded (tests: at most one per part)

    def blocks(self):
        """The loaded `BlockSpan` (callers compute under `lock`)."""
        with self.lock:
            if self._blocks is None:
                self._blocks = load_blocks(self.model_path, 0, self.num_blocks, self.dtype, progress=False)
                self.loads += 1
            return self._blocks

    def embedding(self) -> torch.nn.Module:
        with self.lock:
            if self._embed is None:
                self._embed = load_client_parts(self.model_path, "float32").embed_tokens
                self.loads += 1
            return self._embed

    def reference(self) -> Reference:
        """Blocks [start, end) on a prefix, float32 in and out (evidence and spot checks)."""

        def run(prefix: torch.Tensor, start: int, end: int) -> torch.Tensor:
            with self.lock:
                span = self.blocks()
                with torch.inference_mode():
                    return span(prefix.to(span.dtype), start=start, end=end).float()

        return run

    def embed(self) -> Embed:
        def run(ids: torch.Tensor) -> torch.Tensor:
            with self.lock:
                table = self.embedding()
                with torch.inference_mode():
                    return table(ids).float()

        return run
