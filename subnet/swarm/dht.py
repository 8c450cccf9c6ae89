"""Start hivemind DHT peers bound to a node key (loopback by default)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import hivemind

from keys.node_key import NodeKey

LOOPBACK_MADDRS = ("/ip4/127.0.0.1/tcp/0",)


def write_identity(key: NodeKey, directory: str | os.PathLike | None = None) -> Path:
    """Write the key where the libp2p daemon can read it (a private temp file by default)."""
    directory = Path(directory or tempfile.mkdtemp(prefix="mesh-node-id-"))
    path = directory / "identity.key"
    key.save(path, force=True)
    return path


def start_dht(
    key: NodeKey | None = None,
    initial_peers: Sequence[str] = (),
    *,
    host_maddrs: Sequence[str] = LOOPBACK_MADDRS,
    announce_maddrs: Sequence[str] | None = None,
    identity_path: str | os.PathLike | None = None,
    record_validators: Sequence = (),
    client_mode: bool = False,
    check_if_identity_free: bool = False,
    **kwargs,
) -> hivemind.DHT:
    """Start a DHT whose libp2p peer id is `key.peer_id`.

    `identity_path` may point at the saved node key file; otherwise the key is written to
    a private temp file for the daemon. hivemind's identity-collision check parses the key
    file as RSA and fails on Ed25519 keys whenever initial peers are given, so it is off by
    default (a collision needs a stolen key; the chain's peer-id map is the real guard).
    """
    key = key or NodeKey.generate()
    if identity_path is None:
        identity_path = write_identity(key)
    return hivemind.DHT(
        initial_peers=list(initial_peers),
        host_maddrs=list(host_maddrs),
        announce_maddrs=list(announce_maddrs) if announce_maddrs else None,
        identity_path=str(identity_path),
        record_validators=list(record_validators),
        client_mode=client_mode,
        check_if_identity_free=check_if_identity_free,
        start=True,
        **kwargs,
    )


def visible_maddrs(dht: hivemind.DHT) -> list[str]:
    """Multiaddrs other local peers can dial (loopback only in tests)."""
    return [str(m) for m in dht.get_visible_maddrs()]
