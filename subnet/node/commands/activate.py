"""`mesh-node activate`: activate a registered subnet (signed by the subnet owner)."""

from __future__ import annotations

import argparse

from subnet.node.commands.register import add_chain_argument, add_key_arguments, add_subnet_argument, open_chain


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_chain_argument(parser)
    add_subnet_argument(parser)
    add_key_arguments(parser, hotkey=False)


def run(args: argparse.Namespace) -> int:
    chain = open_chain(args, coldkey_required=True)
    try:
        receipt = chain.activate_subnet(args.subnet_id)
        info = chain.get_subnet(args.subnet_id)
        print(f"subnet {info.subnet_id} ({info.name}) is {info.state.value} at block {receipt.block}")
        return 0
    finally:
        chain.close()
