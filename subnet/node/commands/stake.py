"""`mesh-node stake`: add stake to this node (signed by its coldkey)."""

from __future__ import annotations

import argparse

from subnet.node.commands.chain_output import add_json_argument, emit
from subnet.node.commands.register import (
    add_chain_argument,
    add_key_arguments,
    add_subnet_argument,
    format_tensor,
    hotkey_address,
    open_chain,
    parse_tensor,
)
from subnet.node.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_chain_argument(parser)
    add_subnet_argument(parser)
    add_key_arguments(parser)
    parser.add_argument("--amount", required=True, help="TENSOR to add")
    add_json_argument(parser)


def run(args: argparse.Namespace) -> int:
    amount = parse_tensor(args.amount, "--amount")
    chain = open_chain(args, coldkey_required=True)
    try:
        hotkey = hotkey_address(args)
        node = chain.get_node_by_hotkey(args.subnet_id, hotkey)
        if node is None:
            raise UserError(f"no node with hotkey {hotkey} in subnet {args.subnet_id}")
        receipt = chain.add_stake(args.subnet_id, node.node_id, hotkey=hotkey, amount=amount)
        stake = chain.get_stake(args.subnet_id, hotkey)
        emit(args, {"node_id": node.node_id, "subnet_id": args.subnet_id, "added": amount, "stake": stake,
                    "block": receipt.block}, [f"node {node.node_id}: stake {format_tensor(stake)}"])
        return 0
    finally:
        chain.close()
