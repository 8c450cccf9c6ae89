"""`mesh-node undelegate-stake`: withdraw delegate stake from a subnet (starts unbonding).

Claim it with `mesh-node unstake --claim` once the unbonding period is over.
"""

from __future__ import annotations

import argparse

from subnet.node.commands.chain_output import add_json_argument, emit
from subnet.node.commands.register import (
    add_chain_argument,
    add_key_arguments,
    add_subnet_argument,
    format_tensor,
    open_chain,
    parse_tensor,
)
from subnet.node.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_chain_argument(parser)
    add_subnet_argument(parser)
    add_key_arguments(parser, hotkey=False)
    g = parser.add_mutually_exclusive_group(required=True)
    g.add_argument("--amount", help="TENSOR of delegate stake to withdraw")
    g.add_argument("--all", action="store_true", help="withdraw all of this account's delegate stake")
    add_json_argument(parser)


def run(args: argparse.Namespace) -> int:
    amount = parse_tensor(args.amount, "--amount") if args.amount else None
    if amount is not None and amount <= 0:
        raise UserError("--amount must be more than 0")
    chain = open_chain(args, coldkey_required=True)
    try:
        chain.get_subnet(args.subnet_id)
        account = chain.coldkey.address
        have = chain.get_delegate_stake(args.subnet_id, account)
        if amount is None:
            amount = have
        if have <= 0:
            raise UserError(f"{account} has no delegate stake in subnet {args.subnet_id}")
        if amount > have:
            raise UserError(f"--amount {format_tensor(amount)} is more than the delegate stake {format_tensor(have)}")
        receipt = chain.remove_delegate_stake(args.subnet_id, amount)
        unlock = receipt.detail.get("unlock_epoch")
        mine = chain.get_delegate_stake(args.subnet_id, account)
        when = f" (claimable from epoch {unlock} with `mesh-node unstake --claim`)" if unlock is not None else ""
        emit(args, {"subnet_id": args.subnet_id, "account": account, "removed": amount, "unlock_epoch": unlock,
                    "delegate_stake": mine, "subnet_delegate_stake": chain.get_subnet_delegate_stake(args.subnet_id),
                    "block": receipt.block},
             [f"unbonding {format_tensor(amount)} of delegate stake{when}", f"yours now:   {format_tensor(mine)}"])
        return 0
    finally:
        chain.close()
