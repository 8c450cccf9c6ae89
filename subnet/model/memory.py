"""Give freed memory (KV caches, repacked weights) back to the OS (glibc only; a no-op elsewhere).

KV caches grow (now in chunks, `hoster.cache.SessionKV`) and are freed when sessions end, but
glibc keeps freed heap memory mapped: measured, a hoster that had filled and then closed 4096 tokens of
cache kept +560 MB RSS. `trim()` after a session closes hands the free pages back
(`malloc_trim` releases free pages inside every arena, not only at the top); the backend
also calls it after long (prompt) steps, whose activations are the other large transient.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_libc = None


def _glibc():
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                lib.malloc_trim  # noqa: B018 (glibc only: musl has none)
                _libc = lib
            except (OSError, AttributeError):
                pass
    return _libc or None


def trim() -> None:
    """Return free heap memory to the OS (after a session's cache is dropped)."""
    lib = _glibc()
    if lib:
        lib.malloc_trim(0)
