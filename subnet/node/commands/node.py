"""Run a node: `mesh-node --hoster [--validator] --model ...` (options at the top level)."""

from __future__ import annotations

import argparse

from hoster.options import HosterOptions, add_network_arguments
from subnet.node.node_options import NodeOptions, check_node_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("node")
    g.add_argument("--hoster", action="store_true", help="serve transformer blocks")
    g.add_argument("--validator", action="store_true", help="run the validator duty")
    g.add_argument("--no-reference", dest="reference", action="store_false", default=None,
                   help="validator: do not compute and publish reference outputs even if --model has the weights")
    g.add_argument("--reference-precisions", default=None,
                   help="validator with the weights: compute references in these precision classes, comma-separated "
                        "(e.g. float32,int8,nf4; default: --dtype only), so quantized hosters are refereed in their "
                        "own class (docs/PROTOCOL.md, Scoring with precision classes)")
    g.add_argument("--api", action="store_true", help="also serve the HTTP API on this node")
    g.add_argument("--spot-checks", action="store_true", default=None,
                   help="validators also send every hoster one ordinary inference session per epoch, from a fresh "
                        "client identity, and publish evidence when it lies (validator/spot_checks.py)")
    g.add_argument("--config", help="TOML config file")
    g.add_argument("--initial-peers", nargs="*", default=[], help="multiaddrs of peers to join")
    add_network_arguments(g)
    g.add_argument("--node-key", help="node key file (Ed25519; created by `mesh-node keygen`)")
    g.add_argument("--account-key", help="chain account key file (hotkey)")
    g.add_argument("--data-dir", default=None,
                   help="where the node keeps state that must survive a restart (the validator journal; "
                        "default: the directory of --node-key)")
    g.add_argument("--chain", default=None, help="devnet URL (http://...) or Hypertensor ws URL")
    g.add_argument("--subnet-id", type=int, default=None)
    g.add_argument("--api-host", default=None, help="API bind address (default 127.0.0.1)")
    g.add_argument("--api-port", type=int, default=None, help="API port (default: a free port)")
    g.add_argument("--api-keys", nargs="*", default=None, help="bearer keys required by /v1 (default: open)")
    g.add_argument("--metrics-port", type=int, default=None,
                   help="serve the node's Prometheus /metrics (every role) on this port (0: a free port, logged as "
                        "metrics_serving; default: none; with --api the API's /metrics shows them too)")
    g.add_argument("--metrics-host", default=None, help="bind address of --metrics-port (default 127.0.0.1)")
    HosterOptions.add_arguments(parser.add_argument_group("hoster", "what --hoster serves and how (hoster/options.py)"))


def wants_node(args: argparse.Namespace) -> bool:
    return bool(args.hoster or args.validator)


def run(args: argparse.Namespace) -> int:
    opts = NodeOptions.from_args(args)
    network = check_node_options(opts)  # a mistake ends in one line (NodeConfigError) before torch + hivemind load
    from subnet.node.assembly import run_node  # deferred: torch + hivemind; `mesh-node --help` builds this parser

    return run_node(opts, network)
