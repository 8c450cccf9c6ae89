"""`mesh-node activate`: activate a registered subnet (signed by the subnet owner)."""

from __future__ import annotations

import argparse

from subnet.node.commands.chain_output import add_json_argument, emit
from subnet.node.commands.register import add_chain_argument, add_key_arguments, add_subnet_argument, open_chain


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_chain_argument(parser)
    add_subnet_argument(parser)
    add_key_arguments(parser, hotkey=False)
    add_json_argument(parser)


def run(args: argparse.Namespace) -> int:
    chain = open_chain(args, coldkey_required=True)
    try:
        receipt = chain.activate_subnet(args.subnet_id)
        info = chain.get_subnet(args.subnet_id)
        emit(args, {"subnet_id": info.subnet_id, "name": info.name, "state": info.state.value, "block": receipt.block},
             [f"subnet {info.subnet_id} ({info.name}) is {info.state.value} at block {receipt.block}"])
        return 0
    finally:
        chain.close()
