"""Several inference sessions' steps computed as one batch (the backend's batched decode path).

Linear layers see all rows at once; each session's new K/V go into its own buffers and
attention runs per session (`RowsCache` + `rows_attention`), so nothing is padded or copied.
The masks are transformers' own, built for the left-padded batch and sliced per session.
"""

from __future__ import annotations

import torch

from hoster.adapters import rows_context
from hoster.cache import RowsCache
from hoster.prefix_cache import prepare
from subnet.model.blocks import layer_type


def crop(session, position: int, rows: int | None = None) -> None:
    """Truncate a session's cache to `position` (rollback/replay); first, for a step of `rows` rows,
    copy in a forked prefix and widen a one-row session (`hoster.prefix_cache.prepare`)."""
    if rows is not None:
        prepare(session, rows)
    if session.cache.length > position:
        session.cache.crop(position)
    session.length = session.cache.length


def step_batched(span, batch: list, graphs=None) -> list[torch.Tensor]:
    """Run several sessions' steps (same range, same step length) as one batch; one output each.
    `graphs`: a `hoster.compiled_batch.CompiledBatches` to take where it serves the step.

    Sorts `batch` in place by LoRA adapter (the caller pairs outputs with its list afterwards):
    each adapter's rows are then one slice of the batch (hoster.adapters)."""
    batch.sort(key=lambda t: t.session.adapter or "")
    for task in batch:
        crop(task.session, task.position, task.hidden.shape[0])
    start, end = batch[0].start, batch[0].end
    if graphs is not None and graphs.serves(batch):
        x = torch.cat([t.hidden.to(span.device, span.dtype) for t in batch], dim=0)
        out = graphs.run(x, [t.session.cache for t in batch])
        if out is not None:
            return _results(batch, [t.session.cache for t in batch], [1] * len(batch), 1, out)
    elif graphs is not None:
        graphs.note_eager(batch)  # a bucket graph could serve this: compiled once enough such steps come
    n = batch[0].hidden.shape[1]
    kvs = [t.session.cache for t in batch]
    for kv in kvs:
        kv.reserve(kv.length + n)
    pasts = [kv.length for kv in kvs]
    rows = [t.hidden.shape[0] for t in batch]
    P, B = max(pasts), sum(rows)
    dev, dt = span.device, span.dtype
    x = torch.cat([t.hidden.to(dev, dt) for t in batch], dim=0)
    mask = torch.ones(B, P + n, dtype=torch.bool, device=dev)
    position_ids = torch.empty(B, n, dtype=torch.long, device=dev)
    r = 0
    for L, b in zip(pasts, rows):
        mask[r:r + b, : P - L] = False
        position_ids[r:r + b] = torch.arange(L, L + n, device=dev)
        r += b
    # one-position steps through full-attention layers see all their keys: no mask needed
    mask_free = n == 1 and all(layer_type(span.config, i) == "full_attention" for i in range(start, end))
    if mask_free and P == min(pasts):
        mask = None  # nothing padded either: transformers then skips building a mask
    cache = RowsCache(kvs, start, end, mask_free)
    with rows_context(span, [(t.session.adapter, t.hidden.shape[0]) for t in batch]):  # per-row LoRA (if any)
        out = span(x, position_ids=position_ids, cache=cache, attention_mask=mask, start=start, end=end)
    return _results(batch, kvs, rows, n, out)


def _results(batch: list, kvs: list, rows: list[int], n: int, out: torch.Tensor) -> list[torch.Tensor]:
    """Commit the step's `n` positions in every session; each session's rows of `out`, on the CPU."""
    results, r = [], 0
    for task, kv, b in zip(batch, kvs, rows):
        kv.length += n
        task.session.length = kv.length
        results.append(out[r:r + b].to("cpu", task.hidden.dtype))
        r += b
    return results
