"""Initial peers from the chain: the subnet's bootnodes and its registered nodes' multiaddrs.

With `--chain` and `--subnet-id` a node needs no `--initial-peers`: the chain already stores where
its peers are. Entries come as text multiaddrs (devnet) or binary ones (Hypertensor stores bytes,
read back as `0x` hex or raw bytes). Whatever the chain holds is untrusted input: each entry is
parsed and bounded, one without `/p2p/` gets the registered node's peer id appended, one naming
a peer id other than the node's registered one is dropped, and every skipped entry is one log line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from subnet.logs import event
from subnet.swarm.addresses import MAX_MADDR_CHARS, parse_maddr

log = logging.getLogger(__name__)

MAX_CHAIN_PEERS = 64  # initial peers taken from the chain (a DHT needs a few, not all)


def decode_chain_maddr(raw: object) -> str:
    """Text of one multiaddr as a chain returns it (text, `0x` hex of binary, bytes); ValueError if none."""
    from hivemind.utils.multiaddr import Multiaddr  # deferred: hivemind imports torch (seconds)

    if isinstance(raw, (list, tuple)) and all(isinstance(b, int) and 0 <= b < 256 for b in raw):
        raw = bytes(raw)
    if isinstance(raw, str) and raw.startswith("0x"):
        try:
            raw = bytes.fromhex(raw[2:])
        except ValueError:
            raise ValueError("bad hex") from None
    if isinstance(raw, (bytes, bytearray)):
        if len(raw) > MAX_MADDR_CHARS:
            raise ValueError("binary multiaddr too long")
        try:
            return str(Multiaddr(bytes(raw)))
        except Exception as e:  # the multiaddr library raises several types on junk bytes
            raise ValueError(f"not a binary multiaddr ({type(e).__name__})") from None
    if isinstance(raw, str):
        return raw
    raise ValueError(f"unexpected type {type(raw).__name__}")


def checked_peer(raw: object, peer_id: str | None, source: str) -> str | None:
    """A dialable `/.../p2p/<peer id>` for one chain entry, or None (logged) if it is unusable."""
    try:
        text = decode_chain_maddr(raw)
        maddr = parse_maddr(text, source)
        protocols = [p.name for p in maddr.protocols()]
        if "p2p" not in protocols:
            if not peer_id:
                raise ValueError("no /p2p/<peer id> and no registered peer id")
            maddr = parse_maddr(f"{maddr}/p2p/{peer_id}", source, need_peer_id=True)
        elif peer_id and maddr.value_for_protocol("p2p") != peer_id and "p2p-circuit" not in protocols:
            raise ValueError(f"names peer {maddr.value_for_protocol('p2p')}, not the registered {peer_id}")
        return str(maddr)
    except ValueError as e:
        shown = raw if isinstance(raw, str) else repr(raw)
        event(log, "chain_maddr_skipped", logging.WARNING, source=source, maddr=str(shown)[:120],
              reason=str(e).replace("\n", " ")[:200])
        return None


def peers_from_chain(chain, subnet_id: int, *, exclude_peer_ids: Iterable[str] = (),
                     limit: int = MAX_CHAIN_PEERS) -> list[str]:
    """Bootnodes first, then registered nodes (any class), deduplicated, without our own peer id.

    `chain` is any `chain.base.Chain`. A read that fails is logged and yields what was read.
    """
    exclude = set(exclude_peer_ids)
    out: list[str] = []

    def add(maddr: str | None) -> None:
        if maddr and maddr not in out and len(out) < limit and maddr.rsplit("/p2p/", 1)[-1] not in exclude:
            out.append(maddr)

    try:
        for raw in chain.get_bootnodes(subnet_id) or ():
            add(checked_peer(raw, None, "chain bootnode"))
    except Exception as e:  # discovery is best effort: a chain error must not stop the node here
        event(log, "chain_bootnodes_unreadable", logging.WARNING, subnet_id=subnet_id, error=repr(e)[:200])
    try:
        nodes = chain.get_subnet_nodes(subnet_id)
    except Exception as e:  # as above
        event(log, "chain_nodes_unreadable", logging.WARNING, subnet_id=subnet_id, error=repr(e)[:200])
        nodes = []
    for node in nodes:
        if node.multiaddr and node.peer_id not in exclude:
            add(checked_peer(node.multiaddr, node.peer_id, f"chain node {node.node_id}"))
    event(log, "chain_peers", subnet_id=subnet_id, count=len(out))
    return out
