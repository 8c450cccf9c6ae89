"""`mesh-node register`: register this node on a subnet (coldkey signs, hotkey is named).

Also holds the chain-argument helpers shared by activate/stake/unstake/status.
"""

from __future__ import annotations

import argparse
import os
from decimal import Decimal, InvalidOperation

import base58
from eth_utils import is_hex_address, to_checksum_address

from chain import connect
from chain.types import DECIMALS, UNIT
from keys import AccountKey, NodeKey
from subnet.node.commands.chain_output import add_json_argument, cap_for, check_multiaddr, emit
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
        if not is_hex_address(args.hotkey):
            raise UserError(f"--hotkey must be a 0x account address (20 bytes hex), got {args.hotkey!r}")
        return to_checksum_address(args.hotkey)
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
    parser.add_argument("--multiaddr", default="", help="public multiaddr of the node, ending in /p2p/<its peer id>")
    parser.add_argument("--stake", help="stake in TENSOR (default: the subnet's minimum)")
    parser.add_argument("--max-burn", help="most TENSOR the node registration may burn besides the stake "
                        "(default: the current burn plus 10%%)")
    add_json_argument(parser)
    g = parser.add_argument_group("create a subnet instead (owner)")
    g.add_argument("--create-subnet", metavar="NAME", help="register a new subnet owned by --account-key")
    g.add_argument("--max-cost", help="most TENSOR the subnet registration may cost (default: the current cost "
                   "plus 10%%; the cost doubles after every registration on Hypertensor)")
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
        peer_id = check_node_multiaddr_arg(maddr, None, "--bootnode")
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


def check_node_multiaddr_arg(maddr: str, peer_id: str | None, flag: str) -> str:
    check_multiaddr(maddr, peer_id, flag)
    return maddr.rstrip("/").rpartition("/p2p/")[2]


def _create_subnet(args: argparse.Namespace, chain) -> int:
    if args.chain.startswith(("ws://", "wss://")) and not args.bootnode:
        raise UserError("--bootnode MULTIADDR is required to register a subnet on Hypertensor (at least one, "
                        "ending in /p2p/<peer id>)")
    min_stake = parse_tensor(args.min_stake, "--min-stake")
    max_stake = parse_tensor(args.max_stake, "--max-stake")
    if max_stake < min_stake:
        raise UserError(f"--max-stake {args.max_stake} is below --min-stake {args.min_stake}")
    cost = chain.registration_cost()
    cap = cap_for(cost, parse_tensor(args.max_cost, "--max-cost") if args.max_cost else None,
                  what="subnet registration cost", flag="--max-cost", fmt=format_tensor)
    _check_balance(chain, cost or 0, "the subnet registration")
    sid = chain.register_subnet(
        args.create_subnet, min_stake=min_stake, max_stake=max_stake, initial_coldkeys=args.initial_coldkeys,
        repo=args.repo, description=args.description, max_cost=cap,
        **({"bootnodes": _bootnodes(args.bootnode)} if args.bootnode else {}),
    )  # fmt: skip
    emit(args, {"subnet_id": sid, "name": args.create_subnet, "cost": cost, "max_cost": cap},
         [f"subnet id:   {sid}", f"name:        {args.create_subnet}"]
         + ([f"cost:        {format_tensor(cost)} (cap {format_tensor(cap)})"] if cost is not None and cap else []))
    return 0


def _check_peer_id(peer_id: str) -> None:
    try:
        ok = 6 <= len(base58.b58decode(peer_id)) <= 64
    except ValueError:
        ok = False
    if not ok:
        raise UserError(f"--peer-id {peer_id!r} is not a base58 peer id (like 12D3KooW...)")


def _check_balance(chain, need: int, what: str) -> None:
    have = chain.get_balance(chain.coldkey.address)
    if have < need:
        raise UserError(f"the coldkey {chain.coldkey.address} has {format_tensor(have)}; {what} needs "
                        f"{format_tensor(need)} (plus fees)")


def run(args: argparse.Namespace) -> int:
    _check_multiaddrs(args)
    if args.create_subnet:
        for maddr in args.bootnode:
            check_multiaddr(maddr, None, "--bootnode")
    elif args.subnet_id is None:
        raise UserError("--subnet-id is required (or --create-subnet NAME)")
    if args.node_key:
        peer_id = NodeKey.load(args.node_key).peer_id
    else:
        peer_id = args.peer_id
        if peer_id is not None:
            _check_peer_id(peer_id)
    if args.multiaddr and not args.create_subnet:
        check_multiaddr(args.multiaddr, peer_id, "--multiaddr")
    chain = open_chain(args, coldkey_required=True)
    try:
        if args.create_subnet:
            return _create_subnet(args, chain)
        hotkey = hotkey_address(args)
        if peer_id is None:
            raise UserError("give the node's identity: --node-key FILE or --peer-id ID")
        if hotkey.lower() == chain.coldkey.address.lower():
            raise UserError("the hotkey must be another account than the coldkey (--account-key)")
        subnet = chain.get_subnet(args.subnet_id)
        stake = parse_tensor(args.stake, "--stake") if args.stake else subnet.min_stake
        if not subnet.min_stake <= stake <= subnet.max_stake:
            raise UserError(f"--stake must be between {format_tensor(subnet.min_stake)} and "
                            f"{format_tensor(subnet.max_stake)} on subnet {args.subnet_id}")
        burn = chain.node_registration_burn(args.subnet_id)
        cap = cap_for(burn, parse_tensor(args.max_burn, "--max-burn") if args.max_burn else None,
                      what="node registration burn", flag="--max-burn", fmt=format_tensor)
        _check_balance(chain, stake + (burn or 0), "the stake and registration burn")
        node_id = chain.register_subnet_node(
            args.subnet_id, hotkey=hotkey, peer_id=peer_id, stake=stake, multiaddr=args.multiaddr, max_burn=cap
        )
        node = chain.get_node_by_hotkey(args.subnet_id, hotkey)
        cls = node.node_class.name if node is not None else None
        data = {"node_id": node_id, "subnet_id": args.subnet_id, "peer_id": peer_id, "hotkey": hotkey,
                "stake": stake, "burn": burn, "max_burn": cap, "node_class": cls}
        lines = [f"node id:     {node_id}", f"subnet id:   {args.subnet_id}", f"peer id:     {peer_id}",
                 f"hotkey:      {hotkey}", f"stake:       {format_tensor(stake)}"]
        if burn is not None:
            lines.append(f"burned:      {format_tensor(burn)} (cap {format_tensor(cap or 0)})")
        if cls is not None:
            lines.append(f"class:       {cls}")
        emit(args, data, lines)
        return 0
    finally:
        chain.close()
