"""Chain account keys: Ethereum-style ECDSA (secp256k1) with 20-byte addresses.

Hypertensor uses `AccountId20`; the devnet uses the same key type so one account
file works on both chains. Built on substrate-interface's `Keypair` (ECDSA).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from substrateinterface import Keypair, KeypairType

from keys.errors import KeyFileError

# BIP44 path of Ethereum accounts (MetaMask, Polkadot.js "Ethereum" accounts, Hypertensor's wallets);
# account N of a wallet is ETH_PATH_PREFIX + str(N).
ETH_PATH_PREFIX = "m/44'/60'/0'/0/"
DEFAULT_DERIVATION_PATH = ETH_PATH_PREFIX + "0"
_PATH = re.compile(r"m(/\d+'?)+")


def derivation_path(path: str | None = None, index: int | None = None) -> str:
    """A BIP32 path ('m/44'/60'/0'/0/3'), or the wallet's account `index`; default account 0."""
    if path and index is not None:
        raise KeyFileError("give a derivation path or an account index, not both")
    if index is not None:
        if not 0 <= index < 2**31:
            raise KeyFileError(f"account index must be in [0, 2**31), got {index}")
        return ETH_PATH_PREFIX + str(index)
    path = (path or DEFAULT_DERIVATION_PATH).strip()
    if not _PATH.fullmatch(path):
        raise KeyFileError(f"invalid derivation path {path!r} (expected like {DEFAULT_DERIVATION_PATH})")
    return path


class AccountKey:
    """An ECDSA account keypair; `address` is the 0x-prefixed checksummed H160."""

    def __init__(self, keypair: Keypair):
        if keypair.crypto_type != KeypairType.ECDSA:
            raise ValueError("account keys are ECDSA")
        self.keypair = keypair

    @property
    def address(self) -> str:
        return self.keypair.ss58_address  # for ECDSA this is the 0x H160 address

    @property
    def private_key_hex(self) -> str:
        return "0x" + bytes(self.keypair.private_key).hex()

    @classmethod
    def generate(cls) -> AccountKey:
        return cls.from_mnemonic(Keypair.generate_mnemonic())

    @classmethod
    def from_mnemonic(cls, mnemonic: str, path: str | None = None) -> AccountKey:
        """The ECDSA account at BIP32 `path` (default m/44'/60'/0'/0/0, a wallet's first account)."""
        mnemonic = " ".join(mnemonic.split())
        if not Keypair.validate_mnemonic(mnemonic):
            raise KeyFileError("invalid mnemonic: not a BIP39 word list with a valid checksum")
        path = derivation_path(path)
        try:
            return cls(Keypair.create_from_uri(f"{mnemonic}/{path}", crypto_type=KeypairType.ECDSA))
        except Exception as e:  # substrate-interface raises ValueError/various on bad words or paths
            raise KeyFileError(f"invalid mnemonic or derivation path: {e}") from None

    @classmethod
    def from_private_key(cls, private_key: str | bytes) -> AccountKey:
        try:
            if isinstance(private_key, str):
                private_key = bytes.fromhex(private_key.removeprefix("0x"))
            if len(private_key) != 32:
                raise ValueError("expected 32 bytes")
            return cls(Keypair.create_from_private_key(private_key, crypto_type=KeypairType.ECDSA))
        except (ValueError, TypeError) as e:
            raise KeyFileError(f"invalid private key: {e}") from None

    def sign(self, message: bytes) -> bytes:
        return bytes(self.keypair.sign(message))

    def save(self, path: str | os.PathLike, *, force: bool = False) -> Path:
        path = Path(path)
        if not path.parent.is_dir():
            raise KeyFileError(f"directory does not exist: {path.parent}")
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            raise KeyFileError(f"refusing to overwrite existing key file {path} (use --force)") from None
        except OSError as e:
            raise KeyFileError(f"cannot write key file {path}: {e.strerror}") from None
        with os.fdopen(fd, "w") as f:
            json.dump({"type": "ecdsa", "address": self.address, "private_key": self.private_key_hex}, f)
        os.chmod(path, 0o600)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> AccountKey:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or data.get("type") != "ecdsa":
                raise ValueError("not an ECDSA account key file")
            key = cls.from_private_key(data["private_key"])
        except FileNotFoundError:
            raise KeyFileError(f"account key file not found: {path}") from None
        except OSError as e:
            raise KeyFileError(f"cannot read account key file {path}: {e.strerror}") from None
        except (ValueError, KeyError, TypeError, KeyFileError) as e:
            raise KeyFileError(f"corrupt account key file {path}: {e}") from None
        if data.get("address") and data["address"].lower() != key.address.lower():
            raise KeyFileError(f"corrupt account key file {path}: address does not match the key")
        return key


def verify_account_signature(address: str, message: bytes, signature: bytes) -> bool:
    """True iff `signature` over `message` recovers to `address` (ECDSA, keccak)."""
    try:
        raw = bytes.fromhex(address.removeprefix("0x"))
        if len(raw) != 20 or len(signature) != 65:
            return False
        kp = Keypair(public_key=raw, crypto_type=KeypairType.ECDSA)
        return bool(kp.verify(message, signature))
    except Exception:  # malformed signature/address -> not valid
        return False
