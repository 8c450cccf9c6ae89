"""CLI commands: one module per command, each with `add_arguments(parser)` and `run(args) -> int`.

`HELP` is the one-line help of every command; `load` imports a command module only when that
command runs (or when the config file needs every command's settings), so `mesh-node --help`
stays fast.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

HELP: dict[str, str] = {
    "keygen": "create a node key (peer id) and a chain account key",
    "chain": "run the embedded devnet chain (blocks, SQLite state, HTTP API)",
    "register": "register this node on a subnet with a stake",
    "activate": "activate a registered subnet (subnet owner)",
    "stake": "add stake to this node",
    "unstake": "remove stake from this node (starts unbonding)",
    "delegate-stake": "back a subnet with delegate stake (a subnet without any earns no node emissions)",
    "undelegate-stake": "withdraw delegate stake from a subnet (starts unbonding)",
    "status": "show this node's class, stake, reputation, balance and last score",
    "api": "serve the OpenAI-compatible HTTP API and dashboard",
    "chat": "streaming terminal chat against a swarm or an API URL",
    "devnet": "run a whole subnet on this machine: chain, hosters, validator, API",
    "config": "configuration file helpers (config init)",
}


def add_global_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `mesh-node` itself, before any command (also valid keys of the config file)."""
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def load(name: str) -> ModuleType:
    """The module of command `name` ("node" for `mesh-node --hoster/--validator`)."""
    return importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
