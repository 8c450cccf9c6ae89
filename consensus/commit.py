"""Commit-reveal: commit = sha256(salt || canonical_bytes), salt >= 16 random bytes."""

from __future__ import annotations

import hashlib
import hmac
import secrets

SALT_BYTES = 16
MIN_SALT_BYTES = 16
MAX_SALT_BYTES = 64


def new_salt(n: int = SALT_BYTES) -> bytes:
    if n < MIN_SALT_BYTES:
        raise ValueError(f"salt must have at least {MIN_SALT_BYTES} bytes")
    return secrets.token_bytes(n)


def commitment(salt: bytes, canonical_bytes: bytes) -> bytes:
    """32-byte commitment; refuses short salts (a short salt makes the commit guessable)."""
    if not (MIN_SALT_BYTES <= len(salt) <= MAX_SALT_BYTES):
        raise ValueError(f"salt must have {MIN_SALT_BYTES}..{MAX_SALT_BYTES} bytes")
    return hashlib.sha256(bytes(salt) + bytes(canonical_bytes)).digest()


def verify_commitment(commit: bytes, salt: bytes, canonical_bytes: bytes) -> bool:
    """True iff (salt, canonical_bytes) opens `commit` (constant-time compare)."""
    if not isinstance(commit, (bytes, bytearray)) or len(commit) != 32:
        return False
    if not isinstance(salt, (bytes, bytearray)) or not (MIN_SALT_BYTES <= len(salt) <= MAX_SALT_BYTES):
        return False
    return hmac.compare_digest(commitment(salt, canonical_bytes), bytes(commit))
