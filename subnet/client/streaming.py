"""Incremental detokenization and stop-string matching for token streams.

Byte-level tokenizers split multi-byte UTF-8 characters across tokens; decoding a prefix then
yields U+FFFD. `IncrementalDetokenizer` decodes a small sliding window and holds text back
until it no longer ends in a replacement character, so every delta is whole characters and
the deltas concatenate to the full decode. `StopStringMatcher` holds back text that might be
the beginning of a stop string, so a stream never shows part of a stop sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

REPLACEMENT = "\ufffd"


class _Decoder(Protocol):
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


class IncrementalDetokenizer:
    """Turn a stream of token ids into text deltas that never split a character."""

    def __init__(self, tokenizer: _Decoder, *, skip_special_tokens: bool = True, max_hold: int = 8):
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._max_hold = max_hold  # a UTF-8 character is at most 4 bytes: give up waiting after that
        self._ids: list[int] = []
        self._prefix = 0  # window start: decoding from here gives stable text
        self._read = 0  # tokens before this index have been emitted
        self.text = ""

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=self._skip)

    def add(self, token_id: int) -> str:
        """Append one token; return the newly completed text (possibly "")."""
        self._ids.append(int(token_id))
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        full_text = self._decode(self._ids[self._prefix :])
        pending = len(self._ids) - self._read
        if full_text.endswith(REPLACEMENT) and pending < self._max_hold:
            return ""
        if len(full_text) < len(prefix_text) or not full_text.startswith(prefix_text):
            # Window decode is not prefix-stable (rare normalisers): resynchronise on the whole text.
            whole = self._decode(self._ids)
            delta = whole[len(self.text) :] if whole.startswith(self.text) else ""
        else:
            delta = full_text[len(prefix_text) :]
        self._prefix = self._read
        self._read = len(self._ids)
        self.text += delta
        return delta

    def flush(self) -> str:
        """At the end of the stream: emit whatever is held back (may contain U+FFFD)."""
        if self._read == len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        full_text = self._decode(self._ids[self._prefix :])
        delta = full_text[len(prefix_text) :] if full_text.startswith(prefix_text) else ""
        self._prefix = self._read = len(self._ids)
        self.text += delta
        return delta


class StopStringMatcher:
    """Find stop strings across deltas; release only text that cannot start a stop string."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in stops if s)
        self._max_len = max((len(s) for s in self.stops), default=0)
        self._buffer = ""  # text received but not yet released
        self.stopped = False

    def feed(self, delta: str) -> tuple[str, bool]:
        """Add text; return (text safe to release, whether a stop string was hit).

        On a hit, the released text ends right before the stop string (which is dropped).
        """
        if self.stopped:
            return "", True
        if not self.stops:
            return delta, False
        self._buffer += delta
        hit = -1
        for s in self.stops:
            i = self._buffer.find(s)
            if i != -1 and (hit == -1 or i < hit):
                hit = i
        if hit != -1:
            self.stopped = True
            out, self._buffer = self._buffer[:hit], ""
            return out, True
        keep = self._partial_suffix_len(self._buffer)
        out = self._buffer[: len(self._buffer) - keep]
        self._buffer = self._buffer[len(self._buffer) - keep :]
        return out, False

    def flush(self) -> str:
        """At the end of the stream (no stop hit): release the held-back tail."""
        out, self._buffer = self._buffer, ""
        return "" if self.stopped else out

    def _partial_suffix_len(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best
