"""`mesh-node config init [--path P] [--force]`: write a commented configuration template."""

from __future__ import annotations

import argparse

from subnet.node.config import DEFAULT_PATH, write_template


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    init = sub.add_parser("init", help="write a commented config template")
    init.add_argument("--path", default=str(DEFAULT_PATH), help=f"where to write it (default {DEFAULT_PATH})")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    sub.add_parser("path", help="print the default config file location")


def run(args: argparse.Namespace) -> int:
    if args.action == "path":
        print(DEFAULT_PATH)
        return 0
    path = write_template(args.path, force=args.force)
    print(f"wrote {path}")
    return 0
