"""Precision classes: which hosters' probe outputs may be compared with each other.

A hoster declares its blocks' weight dtype and weight-only quantization in its announcement
(`dtype`, `quant`). Honest hosters in the same class compute the same numbers up to float
rounding; across classes outputs differ by the quantization error (int8 ~1e-2, nf4 ~1e-1
relative), far more than the scoring tolerance. So probe outputs are scored only against
others of the same class (docs/PROTOCOL.md, "Precision classes"), and clients route a
session through one class unless told otherwise. Pure: no I/O, no project imports.
"""

from __future__ import annotations

from collections.abc import Iterable

DTYPES = ("float32", "bfloat16", "float16")
QUANT_MODES = ("none", "int8", "nf4")
# higher = closer to the float32 reference; bfloat16 and float16 are different classes of equal rank
RANK = {"float32": 4, "bfloat16": 3, "float16": 3, "int8": 2, "nf4": 1}
CLASSES = tuple(RANK)


def precision_class(dtype: str, quant: str = "none") -> str:
    """The class of a hoster announcing `dtype` and `quant`: the quantization if any, else the dtype.

    Raises ValueError for anything outside the known sets (a peer's claim is never guessed at).
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}")
    if quant not in QUANT_MODES:
        raise ValueError(f"unknown quantization {quant!r}")
    return dtype if quant == "none" else quant


def meets_minimum(cls: str, minimum: str | None) -> bool:
    """Whether class `cls` is at least as precise as `minimum` (None: anything)."""
    if minimum is None:
        return cls in RANK
    if minimum not in RANK:
        raise ValueError(f"unknown precision {minimum!r}; choose one of {', '.join(CLASSES)}")
    return RANK.get(cls, -1) >= RANK[minimum]


def by_preference(classes: Iterable[str]) -> list[str]:
    """Distinct known classes, most precise first (ties by name: every node orders them alike)."""
    return sorted({c for c in classes if c in RANK}, key=lambda c: (-RANK[c], c))
