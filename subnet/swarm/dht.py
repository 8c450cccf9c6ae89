"""Start hivemind DHT peers bound to a node key (loopback by default; client mode listens on nothing).

The DHT runs in a forked child process that spawns the libp2p daemon (p2pd). `NodeDHT` ties
both to the node: they exit within about a second when the node's main process dies, however it
dies (see `subnet.swarm.lifetime`). The node key reaches the daemon from the node's own key file
when it has one; a generated key is written to a private temp dir that exists only while the
daemon starts (p2pd reads its identity once, at start-up).
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from collections.abc import Sequence
from pathlib import Path

import hivemind

from keys.node_key import NodeKey
from subnet.swarm import lifetime

LOOPBACK_MADDRS = ("/ip4/127.0.0.1/tcp/0",)
READY_TIMEOUT = 180.0  # seconds for a DHT process to start p2pd and join (a loaded 2-core machine: ~20)
IDENTITY_DIR_PREFIX = "mesh-node-id-"


class DHTStartError(RuntimeError):
    """The DHT process did not come up (start_dht)."""


def write_identity(key: NodeKey, directory: str | os.PathLike | None = None) -> Path:
    """Write the key where the libp2p daemon can read it (a private 0700 temp dir by default).
    The caller removes it (`start_dht` does as soon as the daemon has read it)."""
    directory = Path(directory or tempfile.mkdtemp(prefix=IDENTITY_DIR_PREFIX))
    path = directory / "identity.key"
    own_file = key.path
    key.save(path, force=True)
    key.path = own_file  # a temp copy is not the key's file
    return path


def key_file_of(key: NodeKey) -> Path | None:
    """The file `key` was loaded from or saved to, if it still holds exactly this key."""
    path = getattr(key, "path", None)
    if path is None:
        return None
    try:
        return Path(path) if Path(path).read_bytes() == key.to_libp2p_bytes() else None
    except OSError:
        return None


def _static_relays_only() -> None:
    """Make p2pd use exactly the relays it is given (`-relayDiscovery=0`) when it has some.

    With discovery on (p2pd's default), libp2p's autorelay waits for 4 relay candidates or a
    3-minute boot delay before it reserves a slot, so a NAT'd node stays unreachable for minutes;
    with static relays (libp2p's EnableAutoRelayWithStaticRelays) it reserves at once. hivemind's
    `P2P.create` has no parameter for that p2pd flag, so this wraps its argv builder, in the DHT
    process only.
    """
    from hivemind.p2p import P2P

    build = P2P._make_process_args
    if getattr(build, "_mesh_static_relays", False):
        return

    def make_process_args(*args, **kwargs):
        if kwargs.get("trustedRelays") and kwargs.get("autoRelay"):
            kwargs["relayDiscovery"] = False
        return build(*args, **kwargs)

    make_process_args._mesh_static_relays = True
    P2P._make_process_args = staticmethod(make_process_args)


class NodeDHT(hivemind.DHT):
    """A hivemind DHT whose process and p2pd die with the process that started it."""

    def __init__(self, *args, identity_dir: str | os.PathLike | None = None, **kwargs):
        self._owner_pid = os.getpid()
        self._identity_dir = str(identity_dir) if identity_dir else None
        self._spawned_daemons: list[int] = []
        super().__init__(*args, **kwargs)

    def run(self) -> None:  # in the DHT process
        # Forked after the node installed its stop handler: with it, a SIGTERM sent to the whole group
        # (`timeout`, a service manager) only set an event in this process's copy of the node, and the
        # DHT's own `terminate()` was swallowed too, so the node hung at exit joining this process.
        # SIGINT (a terminal's Ctrl-C) hivemind already ignores here: the node shuts the DHT down.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        lifetime.p2pd_dies_with_its_parent(self._spawned_daemons)
        lifetime.watch_parent(self._owner_pid, self._on_owner_exit)
        _static_relays_only()
        super().run()

    def _on_owner_exit(self) -> None:
        """The node's main process is gone: take the daemon and any identity leftovers with us."""
        lifetime.stop_processes(list(self._spawned_daemons))
        lifetime.remove_dir(self._identity_dir)
        p2p = getattr(getattr(self, "_node", None), "p2p", None)
        for attr in ("_daemon_listen_maddr", "_client_listen_maddr"):
            with contextlib.suppress(Exception):
                os.remove(getattr(p2p, attr)["unix"])

    def shutdown(self) -> None:
        try:
            super().shutdown()
        finally:
            if os.getpid() == self._owner_pid:
                lifetime.remove_dir(self._identity_dir)


def start_dht(
    key: NodeKey | None = None,
    initial_peers: Sequence[str] = (),
    *,
    host_maddrs: Sequence[str] | None = None,
    announce_maddrs: Sequence[str] | None = None,
    identity_path: str | os.PathLike | None = None,
    record_validators: Sequence = (),
    client_mode: bool = False,
    check_if_identity_free: bool = False,
    ready_timeout: float = READY_TIMEOUT,
    **kwargs,
) -> NodeDHT:
    """Start a DHT whose libp2p peer id is `key.peer_id`.

    The daemon reads the key from `identity_path`, else from the key's own file (`NodeKey.load`),
    else from a private temp copy removed as soon as the daemon is up (and by the DHT process if
    the node dies first). hivemind's identity-collision check parses the key file as RSA and fails
    on Ed25519 keys whenever initial peers are given, so it is off by default (a collision needs
    a stolen key; the chain's peer-id map is the real guard).

    `host_maddrs` defaults to loopback, except in client mode, where the daemon listens on no
    address at all: a client only dials out (its streams ride its own outbound connections).
    Node roles pick their addresses with `subnet.swarm.addresses.NetworkOptions`.

    hivemind waits for the DHT process without a deadline; here a process not ready within
    `ready_timeout` is stopped and `DHTStartError` raised (one real cause: a process forked from
    this one was killed while it held hivemind's MPFuture lock, and every later one hangs on it).
    """
    key = key or NodeKey.generate()
    identity_dir = None
    if identity_path is None:
        identity_path = key_file_of(key)
    if identity_path is None:
        identity_path = write_identity(key)
        identity_dir = identity_path.parent
    if host_maddrs is None and client_mode:
        kwargs.setdefault("no_listen", True)
    await_ready = kwargs.pop("await_ready", True)
    try:
        dht = NodeDHT(
            initial_peers=list(initial_peers),
            host_maddrs=list(host_maddrs if host_maddrs is not None else LOOPBACK_MADDRS),
            announce_maddrs=list(announce_maddrs) if announce_maddrs else None,
            identity_path=str(Path(identity_path).absolute()),
            record_validators=list(record_validators),
            client_mode=client_mode,
            check_if_identity_free=check_if_identity_free,
            identity_dir=identity_dir,
            start=False,
            **kwargs,
        )
        dht.run_in_background(await_ready=False)
        if await_ready:
            try:
                dht.wait_until_ready(ready_timeout)
            except TimeoutError:
                dht.shutdown()
                raise DHTStartError(f"the DHT process was not ready within {ready_timeout:.0f} s") from None
        return dht
    finally:
        # the DHT is ready (or failed): p2pd has read its identity and never reads it again
        if await_ready:
            lifetime.remove_dir(identity_dir)


def visible_maddrs(dht: hivemind.DHT) -> list[str]:
    """Multiaddrs other peers can dial ([] for a client-mode peer that listens on nothing)."""
    try:
        return [str(m) for m in dht.get_visible_maddrs()]
    except ValueError:  # hivemind: "No multiaddrs found for peer" (no listen address, none announced)
        return []


def dial_order(maddrs: Sequence[str]) -> list[str]:
    """`maddrs` with direct non-loopback addresses first, then loopback, then relayed ones:
    the one address a node prints (READY lines, logs) should work from another machine."""
    def rank(m: str) -> int:
        return 2 if "/p2p-circuit" in m else 1 if m.startswith(("/ip4/127.", "/ip6/::1/")) else 0
    return sorted(maddrs, key=rank)
