"""`mesh-node register`: register this node on a subnet (coldkey signs, hotkey is named).

Also holds the chain-argument helpers shared by activate/stake/unstake/status.
"""

from __future__ import annotations

import argparse
import os
from decimal import Decimal, InvalidOperation

from chain import connect
from chain.types import DECIMALS, UNIT
from keys import AccountKey, NodeKey
from subnet.node.errors import UserError

DEFAULT_DEVNET_URL = "http://127.0.0.1:9944"


# ---- shared helpers ------------------------------------------------------------
def add_chain_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--chain", default=os.environ.get("MESH_CHAIN", "devnet"),
        help=f"'devnet' ({DEFAULT_DEVNET_URL}), a devnet URL http://..., or a Hypertensor ws(s):// URL",
    )  # fmt: skip


def add_subnet_argument(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--subnet-id", type=int, required=required, help="subnet id on the chain")


def add_key_arguments(parser: argparse.ArgumentParser, *, coldkey: bool = True, hotkey: bool = True) -> None:
    if coldkey:
        parser.add_argument("--account-key", help="coldkey account key file (owns the stake, signs)")
    if hotkey:
        parser.add_argument("--hotkey-key", help="hotkey account key file (signs proposals/attestations)")
        parser.add_argument("--hotkey", help="hotkey address (instead of --hotkey-key)")


def chain_url(value: str) -> str:
    if value == "devnet":
        return os.environ.get("MESH_DEVNET_URL", DEFAULT_DEVNET_URL)
    if not value.startswith(("http://", "https://", "ws://", "wss://")):
        raise UserError(f"--chain must be 'devnet', http(s)://... or ws(s)://..., got {value!r}")
    return value


def load_account(path: str | None, flag: str, *, required: bool):
    if not path:
        if required:
            raise UserError(f"{flag} is required (an account key file from `mesh-node keygen`)")
        return None
    return AccountKey.load(path)


def hotkey_address(args: argparse.Namespace, *, required: bool = True) -> str | None:
    key = load_account(getattr(args, "hotkey_key", None), "--hotkey-key", required=False)
    if key is not None:
        return key.address
    if getattr(args, "hotkey", None):
        return args.hotkey
    if required:
        raise UserError("give the node's hotkey: --hotkey-key FILE or --hotkey ADDRESS")
    return None


def open_chain(args: argparse.Namespace, *, coldkey_required: bool = False):
    """Connect with the keys named on the command line."""
    coldkey = load_account(getattr(args, "account_key", None), "--account-key", required=coldkey_required)
    hotkey = load_account(getattr(args, "hotkey_key", None), "--hotkey-key", required=False)
    return connect(chain_url(args.chain), coldkey, hotkey)


def parse_tensor(value: str, flag: str) -> int:
    """'100', '0.5' TENSOR -> smallest units, exactly."""
    try:
        d = Decimal(value)
    except InvalidOperation:
        raise UserError(f"{flag}: not a number: {value!r}") from None
    units = d * UNIT
    if not d.is_finite() or d < 0 or units != units.to_integral_value():
        raise UserError(f"{flag}: must be a non-negative amount with at most {DECIMALS} decimals")
    return int(units)


def format_tensor(units: int) -> str:
    whole, frac = divmod(abs(units), UNIT)
    text = f"{whole}.{frac:0{DECIMALS}d}".rstrip("0").rstrip(".")
    return f"{'-' if units < 0 else ''}{text} TENSOR"


# ---- register ------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_chain_argument(parser)
    add_subnet_argument(parser, required=False)
    add_key_arguments(parser)
    parser.add_argument("--node-key", help="node key file (its peer id is registered)")
    parser.add_argument("--peer-id", help="peer id to register (instead of --node-key)")
    parser.add_argument("--multiaddr", default="", help="public multiaddr of the node (optional)")
    parser.add_argument("--stake", help="stake in TENSOR (default: the subnet's minimum)")
    g = parser.add_argument_group("create a subnet instead (owner)")
    g.add_argument("--create-subnet", metavar="NAME", help="register a new subnet owned by --account-key")
    g.add_argument("--min-stake", default="100", help="subnet minimum node stake in TENSOR")
    g.add_argument("--max-stake", default="1000", help="subnet maximum node stake in TENSOR")
    g.add_argument("--initial-coldkeys", nargs="*", default=[], help="coldkeys allowed before activation")
    g.add_argument("--repo", default="", help="subnet code repository URL")
    g.add_argument(
        "--bootnode", action="append", default=[], metavar="MULTIADDR",
        help="bootnode multiaddr ending in /p2p/<peer id> (Hypertensor requires at least one)",
    )  # fmt: skip
    g.add_argument("--description", default="")


def _bootnodes(items: list[str]) -> dict[str, str]:
    out = {}
    for maddr in items:
        head, sep, peer_id = maddr.rpartition("/p2p/")
        if not sep or not head or not peer_id:
            raise UserError(f"--bootnode must end in /p2p/<peer id>: {maddr!r}")
        out[peer_id] = maddr
    return out


def _check_multiaddrs(args: argparse.Namespace) -> None:
    """Malformed multiaddrs end here in one line, before anything reaches the chain."""
    from subnet.swarm.addresses import parse_maddr  # deferred: hivemind (~2 s), only when an address is given

    try:
        if args.multiaddr:
            parse_maddr(args.multiaddr, "--multiaddr")
        for maddr in args.bootnode or ():
            parse_maddr(maddr, "--bootnode", need_peer_id=True)
    except ValueError as e:
        raise UserError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    _check_multiaddrs(args)
    chain = open_chain(args, coldkey_required=True)
    try:
        if args.create_subnet:
            sid = chain.register_subnet(
                args.create_subnet,
                min_stake=parse_tensor(args.min_stake, "--min-stake"),
                max_stake=parse_tensor(args.max_stake, "--max-stake"),
                initial_coldkeys=args.initial_coldkeys,
                repo=args.repo,
                description=args.description,
                **({"bootnodes": _bootnodes(args.bootnode)} if args.bootnode else {}),
            )
            print(f"subnet id:   {sid}")
            print(f"name:        {args.create_subnet}")
            return 0
        if args.subnet_id is None:
            raise UserError("--subnet-id is required (or --create-subnet NAME)")
        hotkey = hotkey_address(args)
        if args.node_key:
            peer_id = NodeKey.load(args.node_key).peer_id
        elif args.peer_id:
            peer_id = args.peer_id
        else:
            raise UserError("give the node's identity: --node-key FILE or --peer-id ID")
        stake = parse_tensor(args.stake, "--stake") if args.stake else chain.get_subnet(args.subnet_id).min_stake
        node_id = chain.register_subnet_node(
            args.subnet_id, hotkey=hotkey, peer_id=peer_id, stake=stake, multiaddr=args.multiaddr
        )
        node = chain.get_node_by_hotkey(args.subnet_id, hotkey)
        print(f"node id:     {node_id}")
        print(f"subnet id:   {args.subnet_id}")
        print(f"peer id:     {peer_id}")
        print(f"hotkey:      {hotkey}")
        print(f"stake:       {format_tensor(stake)}")
        if node is not None:
            print(f"class:       {node.node_class.name}")
        return 0
    finally:
        chain.close()
