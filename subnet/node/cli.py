"""`mesh-node` entry point.

`mesh-node --hoster/--validator ...` runs a node; `mesh-node <command> ...` runs a tool.
Every failure a user can cause ends in one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import logging
import sys

from subnet.model.process_env import set_thread_pool_defaults

set_thread_pool_defaults()  # before torch and numpy start their thread pools

from chain.types import ChainError  # noqa: E402
from subnet.logs import setup_logging  # noqa: E402
from subnet.node.commands import HELP, add_global_arguments, load, node  # noqa: E402
from subnet.node.config import apply_config, parse_args  # noqa: E402
from subnet.node.errors import UserError  # noqa: E402
from subnet.version import version  # noqa: E402


class _VersionAction(argparse.Action):
    """`--version`: looks the version up only when asked, so other runs do not pay for it."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"mesh-node {version()}")
        parser.exit(0)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mesh-node",
        description="Node software for a decentralized, incentivized LLM inference subnet.",
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    add_global_arguments(parser)
    node.add_arguments(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in HELP.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _known_errors() -> tuple[type[BaseException], ...]:
    from keys.errors import KeyFileError  # deferred: keys imports cryptography (~0.2 s), not needed by --help

    return UserError, KeyFileError, ChainError, FileNotFoundError, PermissionError


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str], command: str) -> argparse.Namespace:
    """Flags win over environment (MESH_NODE_*), which wins over the TOML config file."""
    return parse_args(parser, argv, command=command)


def apply_node_config(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> argparse.Namespace:
    return apply_config(parser, args, argv, command="node")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser()
    # Parse global options, then hand the rest to the command's own parser.
    args, rest = parser.parse_known_args(argv)
    setup_logging(args.log_level)
    try:
        if args.command:
            module = load(args.command)  # imported only when the command runs
            cmd_parser = argparse.ArgumentParser(prog=f"mesh-node {args.command}", description=HELP[args.command])
            module.add_arguments(cmd_parser)
            cmd_args = parse_with_config(cmd_parser, rest, command=args.command)
            cmd_args.log_level = args.log_level
            return int(module.run(cmd_args) or 0)
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        args = apply_node_config(parser, args, argv)
        if not node.wants_node(args):
            parser.print_help()
            return 0
        return int(node.run(args) or 0)
    except KeyboardInterrupt:
        print("mesh-node: interrupted", file=sys.stderr)
        return 130
    except _known_errors() as e:
        print(f"mesh-node: error: {e}", file=sys.stderr)
        logging.getLogger("mesh_node").debug("error detail", exc_info=True)
        return 1
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("subnet.node.commands."):
            print(f"mesh-node: error: command {args.command!r} is not available in this build", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
