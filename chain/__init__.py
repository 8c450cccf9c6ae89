"""mesh-node chain package: the `Chain` interface and `connect()` to pick a backend by URL."""

from __future__ import annotations

from typing import TYPE_CHECKING

from chain.types import error_for

if TYPE_CHECKING:
    from chain.base import Chain
    from keys import AccountKey


def connect(url: str, coldkey: AccountKey | None = None, hotkey: AccountKey | None = None) -> Chain:
    """http(s)://... -> devnet client; ws(s)://... -> Hypertensor (substrate-interface)."""
    if url.startswith(("http://", "https://")):
        from chain.devnet.client import DevnetChain  # deferred: httpx + substrate-interface, ~0.25 s

        return DevnetChain(url, coldkey, hotkey)
    if url.startswith(("ws://", "wss://")):
        from chain.hypertensor.client import HypertensorChain  # deferred: substrate-interface, ~0.2 s

        return HypertensorChain(url, coldkey, hotkey)
    raise error_for(
        "InvalidRequest", f"chain URL must start with http(s):// (devnet) or ws(s):// (Hypertensor): {url!r}"
    )


__all__ = ["connect"]
