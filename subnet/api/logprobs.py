"""OpenAI's logprobs shapes from the sampler's per-token `TokenLogprobs`.

Chat: `{"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob",
"bytes"}]}], "refusal": None}`. Completions: `{"tokens", "token_logprobs", "top_logprobs":
[{token: logprob}], "text_offset"}`. A token the sampler masked (top-k/top-p/min-p) has
logprob -inf, which JSON cannot carry: it is reported as -9999.0, as vLLM does. A token that
is one raw byte of a multi-byte character is named `bytes:\\xNN` (OpenAI's convention) and its
`bytes` carry the byte. `text_offset` counts the characters of the completion text before the
token (a character built from several byte tokens starts at the offset of its first byte).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from subnet.client.sampling import TokenLogprobs

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
MASKED = -9999.0


class TokenText:
    """Decoded text and UTF-8 bytes of single tokens (cached per request)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token_id: int) -> tuple[str, list[int]]:
        hit = self._cache.get(token_id)
        if hit is None:
            piece = None
            convert = getattr(self.tokenizer, "convert_ids_to_tokens", None)
            if convert is not None:
                piece = convert(token_id)
            m = _BYTE_TOKEN.match(piece) if isinstance(piece, str) else None
            if m:  # a SentencePiece byte-fallback token: one raw byte of a multi-byte character
                b = [int(m.group(1), 16)]
                hit = (chr(b[0]) if b[0] < 0x80 else f"bytes:\\x{b[0]:02x}", b)
            else:
                text = self.tokenizer.decode([token_id])
                hit = (text, list(text.encode("utf-8")))
            self._cache[token_id] = hit
        return hit


def _num(x: float) -> float:
    return x if math.isfinite(x) else MASKED


def chat_content(entries: Sequence[TokenLogprobs], text_of: TokenText) -> list[dict]:
    out = []
    for e in entries:
        token, b = text_of(e.token_id)
        top = []
        for tid, lp in e.top:
            t, tb = text_of(tid)
            top.append({"token": t, "logprob": _num(lp), "bytes": tb})
        out.append({"token": token, "logprob": _num(e.logprob), "bytes": b, "top_logprobs": top})
    return out


def chat_logprobs(entries: Sequence[TokenLogprobs], text_of: TokenText) -> dict:
    return {"content": chat_content(entries, text_of), "refusal": None}


def completion_logprobs(entries: Sequence[tuple[TokenLogprobs, str]], text_of: TokenText, offset: int) -> dict:
    """`entries`: (logprobs, the text the token added); `offset`: where the first token's text starts."""
    tokens, lps, tops, offsets = [], [], [], []
    for e, added in entries:
        token, _ = text_of(e.token_id)
        tokens.append(token)
        lps.append(_num(e.logprob))
        top: dict[str, float] = {}
        for tid, lp in e.top:
            top.setdefault(text_of(tid)[0], _num(lp))
        tops.append(top)
        offsets.append(offset)
        offset += len(added)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


class LogprobsFormatter:
    """Per choice: turns batches of `TokenLogprobs` into the response's `logprobs` object."""

    def __init__(self, kind: str, tokenizer: Any, prefix_len: int = 0):
        self.kind = kind
        self.text_of = TokenText(tokenizer)
        self.offset = prefix_len

    def format(self, entries: Sequence[tuple[TokenLogprobs, str]]) -> dict:
        """`entries`: per token, its logprobs and the text it added to the completion."""
        if self.kind == "chat":
            return chat_logprobs([e for e, _ in entries], self.text_of)
        out = completion_logprobs(entries, self.text_of, self.offset)
        self.offset += sum(len(added) for _, added in entries)
        return out
