"""`mesh-node devnet`: chain, bootstrap peer, hosters, validators and API on this machine."""

from __future__ import annotations

import argparse

from chain.devnet.config import DEFAULT_BLOCK_TIME, DEFAULT_EPOCH_LENGTH, MIN_EPOCH_LENGTH, check_timing
from subnet.node.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model directory (default: a tiny random-weight model made locally)")
    parser.add_argument("--hosters", type=int, default=3, help="hoster nodes (default 3, overlapping ranges)")
    parser.add_argument("--validators", type=int, default=1, help="validator-only nodes (default 1)")
    parser.add_argument("--epochs", type=int, default=None, help="run K scored epochs, print a summary, exit")
    parser.add_argument("--block-time", type=float, default=DEFAULT_BLOCK_TIME,
                        help=f"seconds per block (default {DEFAULT_BLOCK_TIME:g})")
    parser.add_argument("--epoch-length", type=int, default=DEFAULT_EPOCH_LENGTH,
                        help=f"blocks per epoch (default {DEFAULT_EPOCH_LENGTH}, at least {MIN_EPOCH_LENGTH})")
    parser.add_argument("--api-host", default="127.0.0.1")
    parser.add_argument("--api-port", type=int, default=8000, help="API/dashboard port (0: any free port)")
    parser.add_argument("--chain-port", type=int, default=0, help="devnet chain HTTP port (0: any free port)")
    parser.add_argument("--dir", dest="workdir", default=None, help="keep state, keys and logs here")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--spot-checks", action="store_true",
                        help="every validator also spot-checks hosters through ordinary inference sessions")
    parser.add_argument("--compile-mode", default="off", choices=("auto", "on", "off"),
                        help="the hosters' decode-step compile mode (default off here: N compiles at once on one "
                             "machine slow the first epochs; a lone hoster's default is auto)")
    parser.add_argument("--timeout", type=float, default=None, help="give up on --epochs after this many seconds")
    parser.add_argument("--restart", action="store_true",
                        help="start a node again (same keys and arguments) when it exits; without it the rest "
                             "keep running without the node")
    parser.add_argument("--max-restarts", type=int, default=3,
                        help="restarts per node per minute before it is left stopped (default 3)")


def run(args: argparse.Namespace) -> int:
    from subnet.node.devnet import DevnetOptions, run_devnet  # deferred: imports the node assembly (torch, hivemind)

    if args.hosters < 1 or args.validators < 1:
        raise UserError("--hosters and --validators must be at least 1")
    if args.max_restarts < 0:
        raise UserError("--max-restarts must be at least 0")
    if args.epochs is not None and args.epochs < 1:
        raise UserError("--epochs must be at least 1")
    try:
        check_timing(args.block_time, args.epoch_length)
    except ValueError as e:
        raise UserError(str(e)) from None
    opts = DevnetOptions(model=args.model, hosters=args.hosters, validators=args.validators, epochs=args.epochs,
                         block_time=args.block_time, epoch_length=args.epoch_length, api_host=args.api_host,
                         api_port=args.api_port, chain_port=args.chain_port, workdir=args.workdir, dtype=args.dtype,
                         timeout=args.timeout, spot_checks=args.spot_checks, restart=args.restart,
                         compile_mode=args.compile_mode,
                         max_restarts=args.max_restarts)
    return run_devnet(opts)
