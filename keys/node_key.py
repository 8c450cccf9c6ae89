"""Ed25519 node identity: one key is both the libp2p peer id and the record signer.

The file format is libp2p's marshalled `PrivateKey` protobuf (type Ed25519, 64-byte
seed||public data), which is exactly what the libp2p daemon reads from hivemind's
`identity_path`, so a DHT started with the file has the peer id computed here.
"""

from __future__ import annotations

import os
from pathlib import Path

import base58
import nacl.exceptions
import nacl.signing

from keys.errors import KeyFileError

_KEY_TYPE_ED25519 = 1
# protobuf: field 1 (Type, varint) = 1; field 2 (Data, bytes) length-prefixed
_PRIV_PREFIX = bytes([0x08, _KEY_TYPE_ED25519, 0x12, 0x40])
_PUB_PREFIX = bytes([0x08, _KEY_TYPE_ED25519, 0x12, 0x20])
_IDENTITY_MULTIHASH = 0x00


def peer_id_from_public_key(public_key: bytes) -> str:
    """libp2p peer id of an Ed25519 public key (identity multihash, base58btc)."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key has 32 bytes")
    marshalled = _PUB_PREFIX + public_key  # 36 bytes <= 42: inlined with the identity hash
    return base58.b58encode(bytes([_IDENTITY_MULTIHASH, len(marshalled)]) + marshalled).decode()


def public_key_from_peer_id(peer_id: str) -> bytes:
    """Inverse of `peer_id_from_public_key` (only Ed25519 identity peer ids)."""
    try:
        raw = base58.b58decode(peer_id)
    except ValueError as e:
        raise ValueError(f"not a base58 peer id: {peer_id!r}") from e
    if len(raw) != 38 or raw[0] != _IDENTITY_MULTIHASH or raw[1] != 36 or raw[2:6] != _PUB_PREFIX:
        raise ValueError(f"not an Ed25519 peer id: {peer_id!r}")
    return raw[6:]


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True iff `signature` is a valid Ed25519 signature of `message` by `public_key`."""
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
        return True
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError, TypeError):
        return False


class NodeKey:
    """An Ed25519 signing key with its libp2p peer id."""

    def __init__(self, signing_key: nacl.signing.SigningKey):
        self._sk = signing_key
        self.public_key: bytes = bytes(signing_key.verify_key)
        self.peer_id: str = peer_id_from_public_key(self.public_key)
        self.path: Path | None = None  # the key file, once loaded or saved (the p2p daemon reads it directly)

    @classmethod
    def generate(cls) -> NodeKey:
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> NodeKey:
        """Deterministic key from a 32-byte seed (tests and devnet only)."""
        return cls(nacl.signing.SigningKey(seed))

    def sign(self, message: bytes) -> bytes:
        return self._sk.sign(message).signature

    def verify(self, message: bytes, signature: bytes) -> bool:
        return verify(self.public_key, message, signature)

    def to_libp2p_bytes(self) -> bytes:
        return _PRIV_PREFIX + bytes(self._sk) + self.public_key

    @classmethod
    def from_libp2p_bytes(cls, data: bytes) -> NodeKey:
        if len(data) != 68 or data[:4] != _PRIV_PREFIX:
            raise KeyFileError("not an Ed25519 node key (expected a libp2p-marshalled Ed25519 private key)")
        key = cls(nacl.signing.SigningKey(data[4:36]))
        if key.public_key != data[36:68]:
            raise KeyFileError("corrupt node key: public half does not match the private seed")
        return key

    def save(self, path: str | os.PathLike, *, force: bool = False) -> Path:
        """Write with mode 0600; refuse to overwrite an existing file unless `force`."""
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
        with os.fdopen(fd, "wb") as f:
            f.write(self.to_libp2p_bytes())
        os.chmod(path, 0o600)
        self.path = path.absolute()
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> NodeKey:
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise KeyFileError(f"node key file not found: {path}") from None
        except OSError as e:
            raise KeyFileError(f"cannot read node key file {path}: {e.strerror}") from None
        try:
            key = cls.from_libp2p_bytes(data)
        except KeyFileError as e:
            raise KeyFileError(f"{path}: {e}") from None
        key.path = path.absolute()
        return key

    def __repr__(self) -> str:
        return f"NodeKey(peer_id={self.peer_id})"
