"""Which multiaddrs a node listens on, which it tells others to dial, and how it uses relays.

A serving node (hoster/validator) listens on every interface by default (`/ip4/0.0.0.0/tcp/0`);
`--host-maddrs` changes that. `--announce-maddrs` (or `--public-ip`, which turns each TCP listen
port into `/ip4/<ip>/tcp/<port>`) is what other machines dial: behind a port forward or a cloud
1:1 NAT the listen address is not the public one. A client-only process (API, chat, Python
client) runs in hivemind's client mode and listens on nothing: it only dials out.

Relays (libp2p circuit relay v2, through hivemind's `use_relay` / `use_auto_relay`):
- `relay=True` (default for a node with a public address): the node declares itself publicly
  reachable, so libp2p starts its relay service at once instead of waiting for AutoNAT.
- `relay=False`: no circuit relay at all (neither relays nor dials relayed peers).
- `auto_relay=True` (`--use-auto-relay`, for a hoster behind NAT): the node declares itself
  privately reachable and reserves a slot on a relay (the `--relay-peers`, else its initial
  peers); others then reach it at `/p2p/<relay>/p2p-circuit/p2p/<it>` addresses.
Parsing here raises ValueError with a one-line message; the CLI turns it into a UserError.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

ALL_INTERFACES = ("/ip4/0.0.0.0/tcp/0",)
LOOPBACK = ("/ip4/127.0.0.1/tcp/0",)
MAX_MADDR_CHARS = 512  # same bound as the devnet chain's multiaddr field
CIRCUIT = "p2p-circuit"


def parse_maddr(text: object, flag: str, *, need_peer_id: bool = False):
    """`text` as a hivemind Multiaddr, or ValueError naming `flag` and what is wrong (one line)."""
    from hivemind.utils.multiaddr import Multiaddr  # deferred: hivemind imports torch (seconds)
    from hivemind.utils.multiaddr.exceptions import Error as MultiaddrError  # deferred: as above

    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{flag}: {text!r} is not a multiaddr (expected text like /ip4/1.2.3.4/tcp/31337)")
    if len(text) > MAX_MADDR_CHARS:
        raise ValueError(f"{flag}: multiaddr longer than {MAX_MADDR_CHARS} characters")
    try:
        maddr = Multiaddr(text.strip())
        protocols = [p.name for p in maddr.protocols()]
    except (ValueError, TypeError, MultiaddrError) as e:
        reason = str(e).replace("\n", " ")
        raise ValueError(f"{flag}: {text!r} is not a multiaddr ({reason})") from None
    if need_peer_id and "p2p" not in protocols:
        raise ValueError(f"{flag}: {text!r} has no /p2p/<peer id> (e.g. /ip4/1.2.3.4/tcp/31337/p2p/12D3KooW...)")
    if not need_peer_id and "tcp" not in protocols and "udp" not in protocols:
        raise ValueError(f"{flag}: {text!r} names no tcp or udp port (e.g. /ip4/0.0.0.0/tcp/31337)")
    return maddr


def parse_maddrs(texts: Sequence[object] | None, flag: str, *, need_peer_id: bool = False) -> list[str]:
    """Every entry checked by `parse_maddr`; returns them as normalized strings."""
    return [str(parse_maddr(t, flag, need_peer_id=need_peer_id)) for t in (texts or ())]


def public_ip_maddrs(ip: str, host_maddrs: Sequence[str]) -> list[str]:
    """`--public-ip IP`: one announce address per fixed TCP listen port of `host_maddrs`."""
    try:
        addr = ipaddress.ip_address(ip.strip())
    except ValueError:
        raise ValueError(f"--public-ip: {ip!r} is not an IPv4 or IPv6 address") from None
    proto = "ip4" if addr.version == 4 else "ip6"
    ports = []
    for text in host_maddrs:
        maddr = parse_maddr(text, "--host-maddrs")
        if "tcp" in [p.name for p in maddr.protocols()]:
            port = maddr.value_for_protocol("tcp")
            if port not in ports:
                ports.append(port)
    if not ports or "0" in ports:
        raise ValueError("--public-ip needs a fixed TCP port to announce: give --host-maddrs /ip4/0.0.0.0/tcp/PORT "
                         "(and open or forward that port)")
    return [f"/{proto}/{addr}/tcp/{port}" for port in ports]


def is_circuit(maddr: str) -> bool:
    """True for a relayed address (`.../p2p/<relay>/p2p-circuit/...`)."""
    return f"/{CIRCUIT}" in maddr


@dataclass
class NetworkOptions:
    """A node's addresses and relay use, as given on the CLI / in the TOML config."""

    host_maddrs: list[str] | None = None  # None: every interface (serving) / none (client)
    announce_maddrs: list[str] | None = None
    public_ip: str | None = None
    relay: bool | None = None  # None: on when the node has a public address, else libp2p's default
    use_auto_relay: bool = False
    relay_peers: list[str] = field(default_factory=list)

    def checked(self) -> NetworkOptions:
        """A copy with every address parsed (ValueError, one line, on the first bad one)."""
        host = parse_maddrs(self.host_maddrs, "--host-maddrs") if self.host_maddrs else None
        announce = parse_maddrs(self.announce_maddrs, "--announce-maddrs") if self.announce_maddrs else None
        if self.public_ip:
            if announce:
                raise ValueError("give --announce-maddrs or --public-ip, not both")
            announce = public_ip_maddrs(self.public_ip, host or ALL_INTERFACES)
        for text in announce or ():
            if parse_maddr(text, "--announce-maddrs").value_for_protocol("tcp") == "0":
                raise ValueError(f"--announce-maddrs: {text!r} has port 0; announce the fixed port others dial")
        relays = parse_maddrs(self.relay_peers, "--relay-peers", need_peer_id=True)
        if self.relay and self.use_auto_relay:
            raise ValueError("--relay (serve as a relay: publicly reachable) and --use-auto-relay (behind NAT) "
                             "exclude each other")
        return NetworkOptions(host, announce, None, self.relay, self.use_auto_relay, relays)

    @property
    def public(self) -> bool:
        return bool(self.announce_maddrs or self.public_ip)

    def dht_kwargs(self, *, client: bool = False) -> dict[str, Any]:
        """Keyword arguments of `subnet.swarm.dht.start_dht` (call on a `checked()` copy)."""
        if client:
            return {"client_mode": True, **({"host_maddrs": self.host_maddrs} if self.host_maddrs else {})}
        kwargs: dict[str, Any] = {"host_maddrs": list(self.host_maddrs or ALL_INTERFACES)}
        if self.announce_maddrs:
            kwargs["announce_maddrs"] = list(self.announce_maddrs)
        relay = self.public if self.relay is None else self.relay
        if self.relay is False:
            kwargs["use_relay"] = False
        elif relay:
            kwargs["force_reachability"] = "public"  # relay service on now, not after AutoNAT's probes
        if self.use_auto_relay:
            kwargs.update(use_relay=True, use_auto_relay=True, force_reachability="private")
            if self.relay_peers:
                kwargs["trusted_relays"] = list(self.relay_peers)
        return kwargs
