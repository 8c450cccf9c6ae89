"""Probe: per-block seeded hidden-state inputs every node can regenerate.

The seed binds the probe to the chain's epoch randomness, the subnet and the epoch, so a
posted probe is checked by recomputing it (a probe record only carries the small spec).
Inputs are drawn as integers from a CPU `torch.Generator` (mt19937, integer output only)
and scaled by a power of two, so they are bit-identical on every machine: torch's
floating-point normal/uniform kernels have vectorised variants that may differ.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

PROBE_VERSION = 1
PROBE_DOMAIN = b"mesh-node/probe/v1"
DEFAULT_BATCH = 1
DEFAULT_SEQ = 8
PROBE_DTYPE = "float32"
_MANTISSA_BITS = 23  # values k / 2**23 with |k| < 2**23 are exact in float32
MAX_PROBE_BLOCKS = 1024
MAX_PROBE_ELEMENTS = 1 << 22  # per block input


def probe_seed(randomness: bytes, subnet_id: int, epoch: int) -> bytes:
    """seed = sha256(domain || randomness (32 bytes) || subnet_id u64 BE || epoch u64 BE)."""
    if not isinstance(randomness, (bytes, bytearray)) or len(randomness) != 32:
        raise ValueError("epoch randomness must be 32 bytes")
    if not (0 <= subnet_id < 1 << 64) or not (0 <= epoch < 1 << 64):
        raise ValueError("subnet_id and epoch must fit in u64")
    return hashlib.sha256(
        PROBE_DOMAIN + bytes(randomness) + subnet_id.to_bytes(8, "big") + epoch.to_bytes(8, "big")
    ).digest()


def block_generator_seed(seed: bytes, block: int) -> int:
    """63-bit torch seed for block `block` derived from the probe seed."""
    if len(seed) != 32 or not (0 <= block < 1 << 32):
        raise ValueError("bad probe seed or block index")
    digest = hashlib.sha256(seed + block.to_bytes(4, "big")).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


@dataclass(frozen=True)
class ProbeSpec:
    """Everything needed to regenerate the probe of one epoch (small enough for a DHT record)."""

    subnet_id: int
    epoch: int
    seed: bytes
    batch: int
    seq: int
    hidden: int
    blocks: tuple[int, ...]
    dtype: str = PROBE_DTYPE
    version: int = PROBE_VERSION

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.batch, self.seq, self.hidden)

    def to_payload(self) -> dict:
        """JSON-able form for the signed probe record."""
        return {
            "version": self.version,
            "subnet": self.subnet_id,
            "epoch": self.epoch,
            "seed": self.seed.hex(),
            "shape": [self.batch, self.seq, self.hidden],
            "dtype": self.dtype,
            "blocks": list(self.blocks),
        }

    @classmethod
    def from_payload(cls, payload: dict) -> ProbeSpec:
        """Parse with strict type checks; raises ValueError on anything unexpected."""
        try:
            shape = payload["shape"]
            if not (isinstance(shape, list) and len(shape) == 3 and all(type(v) is int for v in shape)):
                raise ValueError("probe shape must be three ints")
            blocks = payload["blocks"]
            if not (isinstance(blocks, list) and all(type(b) is int for b in blocks)):
                raise ValueError("probe blocks must be ints")
            for k in ("version", "subnet", "epoch"):
                if type(payload[k]) is not int:
                    raise ValueError(f"probe {k} must be an int")
            seed = bytes.fromhex(payload["seed"])
            spec = cls(
                subnet_id=payload["subnet"],
                epoch=payload["epoch"],
                seed=seed,
                batch=shape[0],
                seq=shape[1],
                hidden=shape[2],
                blocks=tuple(blocks),
                dtype=str(payload["dtype"]),
                version=payload["version"],
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed probe payload: {e}") from None
        spec.check_bounds()
        return spec

    def check_bounds(self) -> None:
        if self.version != PROBE_VERSION:
            raise ValueError(f"unsupported probe version {self.version}")
        if self.dtype != PROBE_DTYPE:
            raise ValueError(f"probe dtype must be {PROBE_DTYPE}")
        if len(self.seed) != 32:
            raise ValueError("probe seed must be 32 bytes")
        if min(self.shape) <= 0 or self.batch * self.seq * self.hidden > MAX_PROBE_ELEMENTS:
            raise ValueError(f"probe shape {self.shape} out of bounds")
        if not (0 < len(self.blocks) <= MAX_PROBE_BLOCKS):
            raise ValueError("probe block list empty or too long")
        if list(self.blocks) != sorted(set(self.blocks)) or self.blocks[0] < 0:
            raise ValueError("probe blocks must be sorted, unique, non-negative")


def make_probe_spec(
    randomness: bytes,
    subnet_id: int,
    epoch: int,
    *,
    hidden: int,
    num_blocks: int,
    batch: int = DEFAULT_BATCH,
    seq: int = DEFAULT_SEQ,
) -> ProbeSpec:
    """The canonical probe of (subnet, epoch): every block of the model, fixed shape."""
    spec = ProbeSpec(
        subnet_id=subnet_id,
        epoch=epoch,
        seed=probe_seed(randomness, subnet_id, epoch),
        batch=batch,
        seq=seq,
        hidden=hidden,
        blocks=tuple(range(num_blocks)),
    )
    spec.check_bounds()
    return spec


def check_probe(posted: ProbeSpec, expected: ProbeSpec) -> None:
    """Raise ValueError unless a posted probe equals the one derived from the chain seed."""
    if posted != expected:
        diffs = [
            f for f in ("subnet_id", "epoch", "seed", "shape", "blocks", "dtype", "version")
            if getattr(posted, f) != getattr(expected, f)
        ]
        raise ValueError(f"posted probe does not match the seed-derived probe ({', '.join(diffs)})")


def probe_input(spec: ProbeSpec, block: int) -> torch.Tensor:
    """x_i: [batch, seq, hidden] float32 in [-1, 1), bit-identical everywhere."""
    if block not in spec.blocks:
        raise ValueError(f"block {block} is not part of the probe")
    gen = torch.Generator(device="cpu")
    gen.manual_seed(block_generator_seed(spec.seed, block))
    limit = 1 << _MANTISSA_BITS
    ints = torch.randint(-limit, limit, spec.shape, generator=gen, dtype=torch.int64, device="cpu")
    return ints.to(torch.float32) * (1.0 / limit)


def probe_inputs(spec: ProbeSpec, blocks: Iterable[int] | None = None) -> dict[int, torch.Tensor]:
    """Inputs for several blocks (all probe blocks by default)."""
    chosen: Sequence[int] = spec.blocks if blocks is None else sorted(set(blocks))
    return {b: probe_input(spec, b) for b in chosen}
