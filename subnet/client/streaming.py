"""Incremental detokenization and stop-string matching for token streams.

Byte-level tokenizers split multi-byte UTF-8 characters across tokens; decoding a prefix then
yields U+FFFD. `IncrementalDetokenizer` decodes a small sliding window and holds text back
until it no longer ends in a replacement character, so every delta is whole characters and
the deltas concatenate to the full decode. `StopStringMatcher` holds back text that might be
the beginning of a stop string, so a stream never shows part of a stop sequence.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Protocol

REPLACEMENT = "\ufffd"


class _Decoder(Protocol):
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


class IncrementalDetokenizer:
    """Turn a stream of token ids into text deltas that never split a character.

    Tokens before `_read` are settled (their text is out). The text of later tokens is
    decoded in a window starting one settled token earlier (context for tokenizers that
    drop leading spaces); everything up to a trailing U+FFFD (a character whose bytes are
    still incomplete) is released at once, the last character only when it is complete.
    Invalid byte sequences become U+FFFD exactly as in a full decode, so the deltas
    always concatenate to `tokenizer.decode(all_ids)`.
    """

    def __init__(self, tokenizer: _Decoder, *, skip_special_tokens: bool = True):
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0  # window start
        self._read = 0  # settled tokens end here
        self._prefix_text = ""  # decode of ids[prefix:read]
        self._emitted = 0  # characters of the unsettled tail already released
        self.text = ""

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=self._skip)

    def _tail(self) -> str:
        window = self._decode(self._ids[self._prefix:])
        return window[len(self._prefix_text):]

    def add(self, token_id: int) -> str:
        """Append one token; return the newly completed text (possibly "")."""
        self._ids.append(int(token_id))
        tail = self._tail()
        if tail.endswith(REPLACEMENT):
            safe = tail[:-1]
            delta = safe[self._emitted:] if len(safe) > self._emitted else ""
            self._emitted += len(delta)
        else:
            delta = tail[self._emitted:]
            self._settle()
        self.text += delta
        return delta

    def _settle(self) -> None:
        self._prefix, self._read = self._read, len(self._ids)
        self._prefix_text = self._decode(self._ids[self._prefix:self._read])
        self._emitted = 0

    def copy(self) -> IncrementalDetokenizer:
        """An independent copy sharing the tokenizer (the token loop rewinds to it after a failed check)."""
        other = copy.copy(self)
        other._ids = list(self._ids)
        return other

    def flush(self) -> str:
        """At the end of the stream: release what is held back (an incomplete character as U+FFFD)."""
        if self._read == len(self._ids):
            return ""
        delta = self._tail()[self._emitted:]
        self._settle()
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
