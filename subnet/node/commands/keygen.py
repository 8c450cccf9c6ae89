"""`mesh-node keygen`: write a node key and an account key, print peer id and address.

The account is new, derived from a wallet's mnemonic (BIP44 path, default m/44'/60'/0'/0/0,
the first account of MetaMask or a Polkadot.js Ethereum account), or imported from a raw
private key in hex (what a wallet exports); `-` reads the secret from stdin so it stays out
of the shell history and the process list.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from keys import AccountKey, NodeKey
from keys.account import DEFAULT_DERIVATION_PATH, derivation_path
from keys.errors import KeyFileError
from subnet.node.commands.chain_output import add_json_argument, emit
from subnet.node.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default=".", help="directory to write node.key and account.json into")
    parser.add_argument("--node-key", help="node key path (default DIR/node.key)")
    parser.add_argument("--account-key", help="account key path (default DIR/account.json)")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--mnemonic", help="derive the account from this BIP39 mnemonic ('-': read it from stdin)")
    src.add_argument("--import-private-key", metavar="HEX",
                     help="import the account from a 32-byte private key in hex ('-': read it from stdin)")
    parser.add_argument("--derivation-path", help=f"BIP32 path for --mnemonic (default {DEFAULT_DERIVATION_PATH})")
    parser.add_argument("--account-index", type=int,
                        help="wallet account number for --mnemonic (m/44'/60'/0'/0/N; 0 is the first)")
    parser.add_argument("--account-only", action="store_true", help="write only the account key (no node key)")
    parser.add_argument("--force", action="store_true", help="overwrite existing key files")
    add_json_argument(parser)


def _secret(value: str) -> str:
    return sys.stdin.readline().strip() if value == "-" else value.strip()


def _account(args: argparse.Namespace) -> tuple[AccountKey, str]:
    if (args.derivation_path or args.account_index is not None) and not args.mnemonic:
        raise UserError("--derivation-path and --account-index apply to --mnemonic only")
    if args.mnemonic:
        path = derivation_path(args.derivation_path, args.account_index)
        return AccountKey.from_mnemonic(_secret(args.mnemonic), path), f"mnemonic {path}"
    if args.import_private_key:
        text = _secret(args.import_private_key)
        if len(text.removeprefix("0x")) != 64:
            raise UserError("--import-private-key expects 64 hex digits (32 bytes), optionally 0x-prefixed")
        return AccountKey.from_private_key(text), "private key"
    return AccountKey.generate(), "new"


def run(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    node_path = Path(args.node_key) if args.node_key else directory / "node.key"
    account_path = Path(args.account_key) if args.account_key else directory / "account.json"
    account, source = _account(args)
    node = None if args.account_only else NodeKey.generate()
    targets = [account_path] + ([] if node is None else [node_path])
    # Check every target before writing any, so a refusal leaves nothing half-written.
    if not args.force:
        for p in targets:
            if p.exists():
                raise KeyFileError(f"refusing to overwrite existing key file {p} (use --force)")
    if node is not None:
        node.save(node_path, force=args.force)
    account.save(account_path, force=args.force)
    data = {"account_key": str(account_path), "address": account.address, "account_source": source,
            "node_key": None if node is None else str(node_path), "peer_id": None if node is None else node.peer_id}
    lines = [] if node is None else [f"node key:    {node_path}", f"peer id:     {node.peer_id}"]
    lines += [f"account key: {account_path}", f"address:     {account.address}"]
    emit(args, data, lines)
    return 0
