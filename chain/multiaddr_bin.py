"""Text multiaddr <-> binary multiaddr (the form Hypertensor stores and validates).

Only the protocols a subnet node announces are supported; anything else fails loudly
instead of producing bytes the chain would reject later.
"""

from __future__ import annotations

import ipaddress

import base58

# code, size in bytes (None = varint length-prefixed, 0 = no value)
_PROTOCOLS: dict[str, tuple[int, int | None]] = {
    "ip4": (4, 4),
    "tcp": (6, 2),
    "udp": (273, 2),
    "ip6": (41, 16),
    "dns": (53, None),
    "dns4": (54, None),
    "dns6": (55, None),
    "p2p": (421, None),
    "ipfs": (421, None),
    "quic": (460, 0),
    "quic-v1": (461, 0),
    "ws": (477, 0),
    "wss": (478, 0),
}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode_multiaddr(text: str) -> bytes:
    """'/ip4/1.2.3.4/tcp/31330/p2p/12D3...' -> binary multiaddr bytes."""
    parts = text.strip().split("/")
    if not text.startswith("/") or len(parts) < 3:
        raise ValueError(f"not a multiaddr: {text!r}")
    parts = parts[1:]
    out = bytearray()
    i = 0
    while i < len(parts):
        name = parts[i]
        if name not in _PROTOCOLS:
            raise ValueError(f"unsupported multiaddr protocol {name!r} in {text!r}")
        code, size = _PROTOCOLS[name]
        out += _varint(code)
        i += 1
        if size == 0:
            continue
        if i >= len(parts):
            raise ValueError(f"missing value for /{name} in {text!r}")
        value = parts[i]
        i += 1
        if name == "ip4":
            out += ipaddress.IPv4Address(value).packed
        elif name == "ip6":
            out += ipaddress.IPv6Address(value).packed
        elif name in ("tcp", "udp"):
            port = int(value)
            if not 0 <= port < 65536:
                raise ValueError(f"bad port {value!r}")
            out += port.to_bytes(2, "big")
        elif name in ("p2p", "ipfs"):
            raw = base58.b58decode(value)
            out += _varint(len(raw)) + raw
        else:
            raw = value.encode()
            out += _varint(len(raw)) + raw
    return bytes(out)


_BY_CODE: dict[int, tuple[str, int | None]] = {}
for _name, (_code, _size) in _PROTOCOLS.items():
    _BY_CODE.setdefault(_code, (_name, _size))  # 421 decodes as /p2p, not the legacy /ipfs

MAX_MULTIADDR_BYTES = 1024  # far above any real address; bounds what a chain record can make us parse


def _read_varint(raw: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if i >= len(raw) or shift > 63:
            raise ValueError("truncated varint in multiaddr")
        b = raw[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def decode_multiaddr(raw: bytes) -> str:
    """Binary multiaddr bytes -> '/ip4/1.2.3.4/tcp/31330/p2p/12D3...' (ValueError if malformed)."""
    if len(raw) > MAX_MULTIADDR_BYTES:
        raise ValueError(f"multiaddr too long ({len(raw)} bytes)")
    out: list[str] = []
    i = 0
    while i < len(raw):
        code, i = _read_varint(raw, i)
        if code not in _BY_CODE:
            raise ValueError(f"unsupported multiaddr protocol code {code}")
        name, size = _BY_CODE[code]
        out.append(name)
        if size == 0:
            continue
        if size is None:
            size, i = _read_varint(raw, i)
        value = raw[i : i + size]
        if len(value) != size:
            raise ValueError(f"truncated /{name} value in multiaddr")
        i += size
        if name == "ip4":
            out.append(str(ipaddress.IPv4Address(value)))
        elif name == "ip6":
            out.append(str(ipaddress.IPv6Address(value)))
        elif name in ("tcp", "udp"):
            out.append(str(int.from_bytes(value, "big")))
        elif name == "p2p":
            out.append(base58.b58encode(value).decode())
        else:
            out.append(value.decode())
    if not out:
        raise ValueError("empty multiaddr")
    return "/" + "/".join(out)


def check_node_multiaddr(text: str) -> str:
    """A node's announced address: a supported multiaddr that ends in /p2p/<peer id>.

    Hypertensor rejects anything else (`MultiaddrInvalidProtocol`); check it before paying fees.
    Returns the peer id it ends in."""
    encode_multiaddr(text)
    head, sep, peer_id = text.strip().rpartition("/p2p/")
    if not sep or not head or not peer_id or "/" in peer_id:
        raise ValueError(f"multiaddr must end in /p2p/<peer id>: {text!r}")
    return peer_id
