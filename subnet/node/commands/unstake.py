"""`mesh-node unstake`: remove stake (starts unbonding) or claim unbonded stake."""

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
    add_subnet_argument(parser, required=False)
    add_key_arguments(parser)
    parser.add_argument("--amount", help="TENSOR to remove from the node's stake")
    parser.add_argument("--claim", action="store_true", help="claim stake whose unbonding period is over")
    add_json_argument(parser)


def run(args: argparse.Namespace) -> int:
    if not args.amount and not args.claim:
        raise UserError("give --amount TENSOR to unstake and/or --claim to claim unbonded stake")
    amount = parse_tensor(args.amount, "--amount") if args.amount else 0
    if amount and args.subnet_id is None:
        raise UserError("--subnet-id is required with --amount")
    chain = open_chain(args, coldkey_required=True)
    data: dict = {"subnet_id": args.subnet_id}
    lines = []
    try:
        if amount:
            hotkey = hotkey_address(args)
            receipt = chain.remove_stake(args.subnet_id, hotkey=hotkey, amount=amount)
            unlock = receipt.detail.get("unlock_epoch")
            when = f" (claimable from epoch {unlock})" if unlock is not None else ""
            stake = chain.get_stake(args.subnet_id, hotkey)
            data.update(unbonding=amount, unlock_epoch=unlock, stake=stake)
            lines.append(f"unbonding {format_tensor(amount)}{when}; stake now {format_tensor(stake)}")
        if args.claim:
            receipt = chain.claim_unbondings()
            claimed = receipt.detail.get("claimed")
            data["claimed"] = None if claimed is None else int(claimed)
            lines.append(f"claimed {format_tensor(int(claimed))}" if claimed is not None else "claim submitted")
        emit(args, data, lines)
        return 0
    finally:
        chain.close()
