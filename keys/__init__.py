"""Identities: Ed25519 node keys (peer ids, record signatures) and ECDSA chain accounts.

The account half is built on substrate-interface, whose import costs about 0.25 s of CPU; a
hoster without a chain and every client need only node keys, so `AccountKey` and
`verify_account_signature` are loaded on first use (PEP 562 module `__getattr__`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from keys.errors import KeyFileError
from keys.node_key import NodeKey, peer_id_from_public_key, public_key_from_peer_id, verify

if TYPE_CHECKING:
    from keys.account import AccountKey, verify_account_signature

_ACCOUNT_NAMES = ("AccountKey", "verify_account_signature")


def __getattr__(name: str) -> Any:
    if name in _ACCOUNT_NAMES:
        from keys import account  # deferred: substrate-interface, ~0.25 s of CPU a process

        return getattr(account, name)
    raise AttributeError(f"module 'keys' has no attribute {name!r}")


__all__ = [
    "AccountKey",
    "KeyFileError",
    "NodeKey",
    "peer_id_from_public_key",
    "public_key_from_peer_id",
    "verify",
    "verify_account_signature",
]
