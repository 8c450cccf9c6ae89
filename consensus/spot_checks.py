"""Spot checks: what a validator sends a hoster as ordinary traffic, derived from public randomness.

For epoch `e`, hoster `h`: `seed = sha256("mesh-node/spot-check/v1\\0" || randomness || u64be(subnet)
|| u64be(e) || peer id of h)`; a sha256 counter stream of the seed gives, in order, the time
(progress in [0.05, 0.45), so evidence lands before the scoring point), the prompt length (4..16)
and tokens, and the decode tokens (2..6). The tokens are embedded and run through blocks
`[0, start)` by the validator (it holds the model) to give the hoster exactly the hidden states a
client generating those tokens would send. Everything is a function of public data, so anyone
can recompute a spot check afterwards; nobody can predict it before the epoch's randomness exists.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

DOMAIN = b"mesh-node/spot-check/v1\0"
EARLIEST, LATEST = 0.05, 0.45


@dataclass(frozen=True)
class SpotCheckPlan:
    at: float  # epoch progress at which to send it
    prompt: tuple[int, ...]
    decode: tuple[int, ...]


class _Stream:
    def __init__(self, seed: bytes):
        self.seed, self.counter = seed, 0

    def u64(self) -> int:
        block = hashlib.sha256(self.seed + struct.pack(">Q", self.counter)).digest()
        self.counter += 1
        return int.from_bytes(block[:8], "big")

    def below(self, n: int) -> int:
        return self.u64() % n  # bias < n / 2^64: irrelevant here


def spot_check_seed(randomness: bytes, subnet_id: int, epoch: int, hoster: str) -> bytes:
    if len(randomness) != 32:
        raise ValueError("epoch randomness must be 32 bytes")
    return hashlib.sha256(DOMAIN + randomness + struct.pack(">QQ", subnet_id, epoch) + hoster.encode()).digest()


def spot_check_plan(randomness: bytes, subnet_id: int, epoch: int, hoster: str, vocab_size: int) -> SpotCheckPlan:
    if vocab_size < 2:
        raise ValueError("vocab_size must be at least 2")
    s = _Stream(spot_check_seed(randomness, subnet_id, epoch, hoster))
    at = EARLIEST + (LATEST - EARLIEST) * (s.u64() >> 11) / float(1 << 53)
    prompt = tuple(s.below(vocab_size) for _ in range(4 + s.below(13)))
    decode = tuple(s.below(vocab_size) for _ in range(2 + s.below(5)))
    return SpotCheckPlan(at, prompt, decode)
