"""Constrained decoding: a grammar masks the client's logits before sampling.

The grammar engine is llguidance (Microsoft's Rust library behind Guidance, also a backend of
vLLM and llama.cpp): it compiles JSON schemas and Lark grammars lazily against the tokenizer's
real token bytes and computes each step's allowed-token mask in tens of microseconds, so there
is no per-schema index build and no dependency beyond its own wheel.

`Grammar` is compiled (and validated: `GrammarError` names the problem) once per request;
`Grammar.start(batch)` gives a `GrammarState` with one matcher per row, which the `Sampler`
asks for a mask before choosing and advances after. Once a row's grammar is complete only its
end-of-sequence tokens stay allowed, so the generation ends exactly where the structure does
(a `max_new_tokens` cut before that ends it as "length", as for any text).
"""

from __future__ import annotations

import json
import threading
import weakref
from typing import Any

import llguidance
import llguidance.hf
import numpy as np
import torch

MAX_GRAMMAR_BYTES = 256 * 1024
_JSON_OPTIONS = {"whitespace_flexible": False}  # compact JSON: no whitespace loops in place of content

_tokenizers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_tokenizers_lock = threading.Lock()


class GrammarError(ValueError):
    """The grammar (or JSON schema) cannot be compiled; the message says why."""


def ll_tokenizer(tokenizer: Any) -> llguidance.LLTokenizer:
    """llguidance's view of a Hugging Face fast tokenizer (built once per tokenizer object)."""
    with _tokenizers_lock:
        hit = _tokenizers.get(tokenizer)
        if hit is None:
            try:
                hit = llguidance.hf.from_tokenizer(tokenizer, n_vocab=len(tokenizer))
            except ValueError as e:
                raise GrammarError(f"constrained decoding needs a fast tokenizer: {e}") from None
            _tokenizers[tokenizer] = hit
        return hit


class Grammar:
    """A validated grammar for one tokenizer; `eos_ids` are the tokens that end a completed row."""

    def __init__(self, tokenizer: Any, grammar: str, eos_ids: tuple[int, ...] = ()):
        if len(grammar) > MAX_GRAMMAR_BYTES:
            raise GrammarError(f"the grammar is larger than {MAX_GRAMMAR_BYTES} bytes")
        self.tokenizer = ll_tokenizer(tokenizer)
        error = llguidance.LLMatcher.validate_grammar(grammar, self.tokenizer)
        if error:
            raise GrammarError(" ".join(error.split())[:500] or "invalid grammar")
        self.grammar = grammar
        own_eos = self.tokenizer.eos_token
        if own_eos is None and not eos_ids:
            raise GrammarError("the tokenizer has no end-of-sequence token to end a completed grammar with")
        self.eos_ids = tuple(sorted({int(e) for e in eos_ids} | ({int(own_eos)} if own_eos is not None else set())))

    @classmethod
    def json_schema(cls, tokenizer: Any, schema: dict, eos_ids: tuple[int, ...] = ()) -> Grammar:
        """Output must be one JSON value valid against `schema` (unknown keywords are errors)."""
        if not isinstance(schema, dict):
            raise GrammarError("the JSON schema must be an object")
        try:
            text = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=_JSON_OPTIONS)
        except (ValueError, TypeError) as e:
            raise GrammarError(str(e)) from None
        return cls(tokenizer, text, eos_ids)

    @classmethod
    def json_object(cls, tokenizer: Any, eos_ids: tuple[int, ...] = ()) -> Grammar:
        """Output must be one JSON object (OpenAI's `response_format: json_object`)."""
        return cls.json_schema(tokenizer, {"type": "object"}, eos_ids)

    def start(self, batch: int) -> GrammarState:
        return GrammarState(self, batch)


class GrammarState:
    """Per-generation matchers, one per row."""

    def __init__(self, grammar: Grammar, batch: int):
        self.grammar = grammar
        self.matchers = [llguidance.LLMatcher(grammar.tokenizer, grammar.grammar, log_level=0) for _ in range(batch)]
        self.done = [False] * batch
        self._eos = torch.tensor(grammar.eos_ids, dtype=torch.long)

    def _allowed(self, row: int, width: int) -> torch.Tensor:
        m = self.matchers[row]
        allowed = torch.zeros(width, dtype=torch.bool)
        if self.done[row] or m.is_error():
            allowed[self._eos[self._eos < width]] = True
            return allowed
        bits = np.unpackbits(np.frombuffer(m.compute_bitmask(), dtype=np.uint8), bitorder="little")
        n = min(width, bits.shape[0])
        allowed[:n] = torch.from_numpy(bits[:n].astype(np.bool_))
        if m.is_accepting():  # complete: any of the model's end tokens may end it
            allowed[self._eos[self._eos < width]] = True
        if not allowed.any():
            allowed[self._eos[self._eos < width]] = True
        return allowed

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` `[batch, vocab]` with every token the grammar forbids set to -inf."""
        width = logits.shape[-1]
        allowed = torch.stack([self._allowed(r, width) for r in range(logits.shape[0])])
        return logits.masked_fill(~allowed, float("-inf"))

    def advance(self, tokens: torch.Tensor) -> None:
        for row, tok in enumerate(tokens.tolist()):
            if self.done[row]:
                continue
            if tok in self.grammar.eos_ids:
                self.done[row] = True
                continue
            self.matchers[row].consume_token(int(tok))

    def copy(self) -> GrammarState:
        """An independent copy (the token loop rewinds to it after a failed check)."""
        other = object.__new__(GrammarState)
        other.grammar, other._eos, other.done = self.grammar, self._eos, list(self.done)
        other.matchers = [m.deep_copy() for m in self.matchers]
        return other

    def accepting(self, row: int = 0) -> bool:
        return self.matchers[row].is_accepting()
