"""Shared pieces of the chain commands: `--json` output, cost caps, multiaddr checks.

Every chain command prints either human lines or (with `--json`) one JSON object that a script
can parse; amounts in JSON are integers of the smallest unit (18 decimals). Checks here turn
what the runtime would reject into a one-line `UserError` before any fee is paid.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable

from chain.base import default_cap
from chain.multiaddr_bin import check_node_multiaddr
from subnet.node.errors import UserError


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object (amounts in smallest units)")


def emit(args: argparse.Namespace, data: dict, lines: Iterable[str]) -> None:
    """Print `data` as JSON with --json, else the human `lines`."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
        return
    for line in lines:
        print(line)


def cap_for(cost: int | None, given: int | None, *, what: str, flag: str, fmt) -> int | None:
    """The cap to send: `given`, else the current cost plus a margin; a cost above the cap is an error.

    None when neither is known (the chain client then decides, and refuses without a cap)."""
    if given is None:
        return None if cost is None else default_cap(cost)
    if cost is not None and cost > given:
        raise UserError(f"the {what} is {fmt(cost)}, more than {flag} {fmt(given)}; raise {flag} to pay it")
    return given


def check_multiaddr(maddr: str, peer_id: str | None, flag: str) -> str:
    """`maddr` must be a supported multiaddr ending in /p2p/<peer id> (of this node, if known)."""
    try:
        ends_with = check_node_multiaddr(maddr)
    except ValueError as e:
        raise UserError(f"{flag}: {e}") from None
    if peer_id is not None and ends_with != peer_id:
        raise UserError(f"{flag} ends in /p2p/{ends_with}, but the node's peer id is {peer_id}")
    return maddr
