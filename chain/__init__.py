"""mesh-node chain package: the `Chain` interface and `connect()` to pick a backend by URL."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chain.base import Chain
    from keys import AccountKey


def connect(url: str, coldkey: AccountKey | None = None, hotkey: AccountKey | None = None) -> Chain:
    """http(s)://... -> devnet client; ws(s)://... -> Hypertensor (substrate-interface)."""
    from chain.types import error_for

    if url.startswith(("http://", "https://")):
        from chain.devnet.client import DevnetChain

        return DevnetChain(url, coldkey, hotkey)
    if url.startswith(("ws://", "wss://")):
        from chain.hypertensor import HypertensorChain

        return HypertensorChain(url, coldkey, hotkey)
    raise error_for("InvalidRequest", f"chain URL must start with http(s):// (devnet) or ws(s):// (Hypertensor): {url!r}")


__all__ = ["connect"]
