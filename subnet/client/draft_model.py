"""Loading an optional local draft model for speculative decoding (`speculative.ModelDrafter`).

The draft model must share the served model's tokenizer: its drafts are token ids the chain
verifies. A mismatch is refused here rather than producing drafts that are never accepted.
"""

from __future__ import annotations

import os

from subnet.client.speculative import ModelDrafter


def load_drafter(path: str | os.PathLike, tokenizer, vocab_size: int) -> ModelDrafter:
    """A `ModelDrafter` over the causal LM at `path` (local files only; float32 on CPU)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # deferred: heavy import, only when used

    try:
        draft_tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:
        raise ValueError(f"draft model {path}: cannot load its tokenizer ({e})") from None
    if tokenizer is not None and draft_tok.get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"draft model {path} does not share the served model's tokenizer")
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    return ModelDrafter(model, vocab_size)
