"""Input checks for devnet calls: each failure is a typed chain error with a reason code."""

from __future__ import annotations

from typing import Any

import base58
from eth_utils import is_hex_address, to_checksum_address

from chain.devnet.codec import as_int
from chain.types import ChainError, error_for

U32_MAX = 2**32 - 1  # subnet ids, node ids, epochs, nonces (the pallet's u32)
U128_MAX = 2**128 - 1  # balances, stakes, scores (the pallet's u128)


def fail(reason: str, message: str = "") -> ChainError:
    return error_for(reason, message)


def address(value: Any, name: str) -> str:
    if not isinstance(value, str) or not is_hex_address(value):
        raise fail("InvalidRequest", f"{name} is not a 0x account address")
    return to_checksum_address(value)


def text(value: Any, name: str, max_len: int, *, required: bool = False) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str) or len(value) > max_len:
        raise fail("InvalidRequest", f"{name} must be a string of at most {max_len} chars")
    if required and not value:
        raise fail("InvalidRequest", f"{name} is required")
    return value


def peer_id(value: Any) -> str:
    pid = text(value, "peer_id", 128, required=True)
    try:
        if len(base58.b58decode(pid)) < 6:
            raise ValueError
    except ValueError:
        raise fail("InvalidPeerId", f"not a base58 peer id: {pid!r}") from None
    return pid


def integer(value: Any, name: str, lo: int = 0, hi: int = U128_MAX) -> int:
    """An int (JSON number or decimal string) in [lo, hi]; InvalidRequest (HTTP 400) otherwise."""
    try:
        v = as_int(value, name)
    except ValueError as e:
        raise fail("InvalidRequest", str(e)) from None
    if not lo <= v <= hi:
        raise fail("InvalidRequest", f"{name} out of range [{lo}, {hi}]")
    return v


def u32(value: Any, name: str) -> int:
    return integer(value, name, 0, U32_MAX)


def u128(value: Any, name: str, lo: int = 0) -> int:
    return integer(value, name, lo, U128_MAX)
