"""Sentence embeddings from a causal LM's hidden states: what `/v1/embeddings` returns.

The embedding of a token sequence is the **mean over its positions of the final-normed last
hidden state** (the output of the last block passed through the model's final norm, i.e.
what the LM head would read), **L2-normalised** so that a dot product is a cosine
similarity. Causal LMs are not trained as embedders, so this is a reasonable default rather
than a tuned one; it is computed the same way by the swarm client (blocks on hosters, norm
here) and by the local backend (transformers' `last_hidden_state`, already normed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

StepFn = Callable[[torch.Tensor, int], torch.Tensor]
MAX_ROWS = 16  # rows per session: bounds the hosters' activation memory for one embedding batch


def pool(normed: torch.Tensor) -> torch.Tensor:
    """`[batch, T, hidden]` final-normed states -> `[batch, hidden]` unit vectors (float32)."""
    mean = normed.float().mean(dim=1)
    return torch.nn.functional.normalize(mean, p=2.0, dim=-1)


def by_length(inputs: Sequence[Sequence[int]]) -> dict[int, list[int]]:
    """Indices of `inputs` grouped by length: each group runs as one unpadded batch."""
    groups: dict[int, list[int]] = {}
    for i, ids in enumerate(inputs):
        if not ids:
            raise ValueError(f"input {i} is empty")
        groups.setdefault(len(ids), []).append(i)
    return groups


@torch.inference_mode()
def embed_batches(inputs: Sequence[Sequence[int]], embed: Callable[[torch.Tensor], torch.Tensor],
                  norm: Callable[[torch.Tensor], torch.Tensor],
                  run_blocks: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Embeddings `[len(inputs), hidden]`: per equal-length group, embed -> blocks -> norm -> pool.

    `run_blocks(hidden [b, T, h]) -> [b, T, h]` runs every transformer block (a fresh remote
    session on the swarm)."""
    out: list[torch.Tensor | None] = [None] * len(inputs)
    for _, group in sorted(by_length(inputs).items()):
        for start in range(0, len(group), MAX_ROWS):
            idx = group[start:start + MAX_ROWS]
            ids = torch.tensor([list(inputs[i]) for i in idx], dtype=torch.long)
            vectors = pool(norm(run_blocks(embed(ids))))
            for row, i in enumerate(idx):
                out[i] = vectors[row]
    return torch.stack(out)  # type: ignore[arg-type]
