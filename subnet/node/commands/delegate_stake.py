"""`mesh-node delegate-stake`: back a subnet with delegate stake (signed by --account-key).

On Hypertensor a subnet without delegate stake earns no node emissions; the devnet applies
the same rule. Anyone may delegate: the subnet owner usually does it right after registering.
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
    parser.add_argument("--amount", required=True, help="TENSOR to delegate to the subnet")
    add_json_argument(parser)


def run(args: argparse.Namespace) -> int:
    amount = parse_tensor(args.amount, "--amount")
    if amount <= 0:
        raise UserError("--amount must be more than 0")
    chain = open_chain(args, coldkey_required=True)
    try:
        chain.get_subnet(args.subnet_id)  # an unknown subnet fails here, before anything is signed
        account = chain.coldkey.address
        balance = chain.get_balance(account)
        if amount > balance:
            raise UserError(f"--amount {format_tensor(amount)} is more than the balance {format_tensor(balance)} "
                            f"of {account}")
        receipt = chain.add_delegate_stake(args.subnet_id, amount)
        mine, total = chain.get_delegate_stake(args.subnet_id, account), chain.get_subnet_delegate_stake(args.subnet_id)
        emit(args, {"subnet_id": args.subnet_id, "account": account, "added": amount, "delegate_stake": mine,
                    "subnet_delegate_stake": total, "block": receipt.block},
             [f"delegated {format_tensor(amount)} to subnet {args.subnet_id}",
              f"yours:       {format_tensor(mine)}", f"subnet total: {format_tensor(total)}"])
        return 0
    finally:
        chain.close()
