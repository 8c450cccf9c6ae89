"""The devnet's signed-transaction envelope: canonical body bytes, domain, ECDSA check.

A write is `{"chain", "call", "args", "signer", "nonce"}` as canonical JSON; the
signature (65-byte recoverable ECDSA, keccak) covers TX_DOMAIN + those exact bytes.
"""

from __future__ import annotations

from eth_utils import is_hex_address
from substrateinterface.utils.ecdsa_helpers import ecdsa_verify

from chain.devnet.codec import canonical_json

MAX_TX_BYTES = 256 * 1024
TX_DOMAIN = b"mesh-node devnet tx\n"  # signatures cover TX_DOMAIN + body bytes


def verify_signature(address: str, message: bytes, signature: bytes) -> bool:
    """True iff the 65-byte ECDSA signature over `message` recovers to `address`."""
    try:
        if len(signature) != 65 or not is_hex_address(address):
            return False
        return bool(ecdsa_verify(signature, message, bytes.fromhex(address[2:])))
    except Exception:  # eth_keys raises BadSignature/ValidationError on junk
        return False


def sign_tx(key, chain_id: str, call: str, args: dict, nonce: int) -> tuple[bytes, bytes]:
    """(body, signature) for a call signed by `key` (an AccountKey)."""
    body = canonical_json({"chain": chain_id, "call": call, "args": args, "signer": key.address, "nonce": nonce})
    return body, key.sign(TX_DOMAIN + body)
