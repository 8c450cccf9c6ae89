"""`mesh-node chain`: run the embedded devnet chain (blocks, SQLite state, HTTP API)."""

from __future__ import annotations

import argparse

from chain.devnet import server
from subnet.node.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    server.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        params = server.parse_params(args.param)
        server.build_config(args.block_time, args.epoch_length, params)  # validate before opening the database
    except (ValueError, TypeError) as e:
        raise UserError(str(e)) from None
    server.run_chain(
        args.db, args.host, args.port, args.block_time, args.epoch_length,
        params=params, print_accounts=not args.quiet, log_level=getattr(args, "log_level", "WARNING"),
    )  # fmt: skip
    return 0
