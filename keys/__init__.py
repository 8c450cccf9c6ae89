"""Identities: Ed25519 node keys (peer ids, record signatures) and ECDSA chain accounts."""

from keys.account import AccountKey, verify_account_signature
from keys.errors import KeyFileError
from keys.node_key import NodeKey, peer_id_from_public_key, public_key_from_peer_id, verify

__all__ = [
    "AccountKey",
    "KeyFileError",
    "NodeKey",
    "peer_id_from_public_key",
    "public_key_from_peer_id",
    "verify",
    "verify_account_signature",
]
