"""`mesh-node keygen`: write a node key and an account key, print peer id and address."""

from __future__ import annotations

import argparse
from pathlib import Path

from keys import AccountKey, NodeKey
from keys.errors import KeyFileError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default=".", help="directory to write node.key and account.json into")
    parser.add_argument("--node-key", help="node key path (default DIR/node.key)")
    parser.add_argument("--account-key", help="account key path (default DIR/account.json)")
    parser.add_argument("--mnemonic", help="derive the account from this mnemonic instead of a new one")
    parser.add_argument("--force", action="store_true", help="overwrite existing key files")


def run(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    node_path = Path(args.node_key) if args.node_key else directory / "node.key"
    account_path = Path(args.account_key) if args.account_key else directory / "account.json"
    account = AccountKey.from_mnemonic(args.mnemonic) if args.mnemonic else AccountKey.generate()
    node = NodeKey.generate()
    # Check both targets before writing either, so a refusal leaves nothing half-written.
    if not args.force:
        for p in (node_path, account_path):
            if p.exists():
                raise KeyFileError(f"refusing to overwrite existing key file {p} (use --force)")
    node.save(node_path, force=args.force)
    account.save(account_path, force=args.force)
    print(f"node key:    {node_path}")
    print(f"peer id:     {node.peer_id}")
    print(f"account key: {account_path}")
    print(f"address:     {account.address}")
    return 0
