"""The project's own decode loop in one process: the hosters' block code + the client's head, no network.

What a chain of hosters would do if transport cost nothing: every block of the model in one
`BlockSpan` (`subnet.model.blocks.load_blocks`, the hosters' loader and kernel choice), its
K/V in the hosters' in-place store (`hoster.cache.SessionKV` behind `KVCache`, with the
attention the hoster registers, `enable_rows_attention`), prompts in the hoster's
`PREFILL_CHUNK`-position chunks, and the client's embeddings, final norm and LM head
(`subnet.model.blocks.load_client_parts` + `subnet.client.generation.ClientHead`). Greedy:
the next token is the argmax of the float32 logits with the end-of-sequence ids masked, as
`transformers` generate picks it with `min_new_tokens` = `max_new_tokens` (what every
benchmark row asks, so that all rows make the same number of tokens). No
`generate` machinery, no masks or caches allocated per step beyond what the block code does.

    loop = LeanLocal(path)
    ids = loop.generate(prompt_ids, new_tokens)   # [1, prompt + new] like transformers generate

`LeanLocal(path, compiled=True)` runs one-position steps through the hosters' compiled decode
step (`hoster.compiled.CompiledDecode`, compiled before the first call; blocks and head on the
same linear kernel as the eager loop), as a hoster does
once `--compile-mode auto` chose it: the local row to hold compiled hosters against.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hoster.backend import PREFILL_CHUNK
from hoster.cache import KVCache, SessionKV, enable_rows_attention
from hoster.compiled import SLACK, CompiledDecode
from subnet.client.generation import ClientHead
from subnet.model.blocks import load_blocks, load_client_parts, load_config


class LeanLocal:
    """Greedy generation with the hosters' `BlockSpan` over all layers and the client's head."""

    def __init__(self, path: str | Path, *, linear_kernel: str | None = None, dtype: str = "float32",
                 compiled: bool = False):
        parts = load_client_parts(path, dtype, linear_kernel=linear_kernel)
        self.head = ClientHead(parts.embed_tokens, parts.norm, parts.lm_head, parts.config.vocab_size)
        self.span = load_blocks(path, 0, parts.config.num_hidden_layers, dtype, progress=False,
                                linear_kernel=linear_kernel)
        enable_rows_attention(self.span.config)  # what every hoster's Backend does at start
        self.eos_ids = _eos_ids(path)
        self.compiled = None
        if compiled:
            self.compiled = CompiledDecode(self.span)
            self.compiled.warm_up(self.new_kv, KVCache)

    def new_kv(self, max_length: int) -> SessionKV:
        s = self.span
        return SessionKV(s.start, s.end, 1, max_length, s.num_kv_heads, s.head_dim, s.dtype, s.device)

    def step(self, kv: SessionKV, hidden: torch.Tensor) -> torch.Tensor:
        """One session step as a hoster runs it (`hoster.backend.Backend._step_one`, minus the threads)."""
        n = hidden.shape[1]
        kv.reserve(kv.length + n)
        cache = KVCache(kv)
        c, s = self.compiled, self.span
        if c is not None and c.serves(hidden, kv, s.start, s.end):
            out = c(hidden, cache, s.start, s.end)
            if out is not None:
                kv.length += 1
                return out
        outs = []
        for i in range(0, n, PREFILL_CHUNK):
            chunk = hidden[:, i:i + PREFILL_CHUNK]
            outs.append(self.span(chunk, cache=cache))
            kv.length += chunk.shape[1]
        return outs[0] if len(outs) == 1 else torch.cat(outs, 1)

    @torch.inference_mode()
    def generate(self, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """`ids` [1, T] followed by `new_tokens` greedy tokens."""
        if ids.shape[0] != 1:
            raise ValueError("one sequence at a time")
        kv = self.new_kv(ids.shape[1] + new_tokens + SLACK)  # a compiled step never views its whole buffer
        out = [ids]
        hidden = self.step(kv, self.head.embed_ids(ids))
        for i in range(new_tokens):
            logits = self.head.logits(hidden)
            if self.eos_ids:
                logits[:, self.eos_ids] = float("-inf")  # min_new_tokens: no end of sequence before the last
            token = logits.argmax(-1, keepdim=True)
            out.append(token)
            if i + 1 < new_tokens:
                hidden = self.step(kv, self.head.embed_ids(token))
        return torch.cat(out, 1)


def _eos_ids(path: str | Path) -> list[int]:
    """End-of-sequence ids as `transformers` generate reads them (generation config, else model config)."""
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(path).eos_token_id
    except OSError:  # no generation_config.json
        eos = None
    if eos is None:
        eos = getattr(load_config(path), "eos_token_id", None)
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
