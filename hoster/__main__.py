"""`python -m hoster --model PATH [--blocks a:b] ...`: one hoster as a process.

The hoster options are `hoster.options.HosterOptions` (the same as `mesh-node --hoster`);
only the process's own network identity (--initial-peers, --host-maddrs, --node-key),
--metrics-port/--metrics-host and --log-level are defined here, as `mesh-node` defines them at
node level. With --metrics-port, Prometheus metrics (hoster/metrics.py) are served on
http://HOST:PORT/metrics (0: a free port, logged as `metrics_serving url=...`); off by default.

Prints exactly one line `READY <peer_id> <maddr>` on stdout once it serves (tests and the
devnet wait for it); logs go to stderr. SIGINT/SIGTERM withdraw the announcement and
close open sessions cleanly, then the process exits 0.
"""

from __future__ import annotations

from subnet.model.process_env import set_thread_pool_defaults

set_thread_pool_defaults()  # before torch and numpy start their thread pools

import argparse  # noqa: E402
import gc  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from hoster.metrics import HosterMetrics, MetricsServer  # noqa: E402
from hoster.options import HosterOptions, add_network_arguments, network_options  # noqa: E402
from hoster.server import Hoster, install_signal_handlers  # noqa: E402
from keys.node_key import NodeKey  # noqa: E402
from subnet.logs import setup_logging  # noqa: E402

HOST_MADDRS_ENV = "MESH_NODE_HOST_MADDRS"  # the listen default, shared with `mesh-node`'s environment settings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hoster", description="serve transformer blocks over the swarm")
    HosterOptions.add_arguments(p, require_model=True)
    p.add_argument("--initial-peers", nargs="*", default=[], help="multiaddrs of peers to join")
    add_network_arguments(p)
    p.add_argument("--node-key", default=None, help="node key file (default: a fresh key)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus /metrics on this port (0: a free port; default: no metrics endpoint)")
    p.add_argument("--metrics-host", default="127.0.0.1", help="bind address of /metrics (default %(default)s)")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        key = NodeKey.load(args.node_key) if args.node_key else NodeKey.generate()
        if args.host_maddrs is None and os.environ.get(HOST_MADDRS_ENV):  # as `mesh-node` reads it
            args.host_maddrs = os.environ[HOST_MADDRS_ENV].replace(",", " ").split()
        net = network_options(args)
        hoster = Hoster.from_options(HosterOptions.from_args(args), node_key=key, initial_peers=args.initial_peers,
                                     network=net)  # bad values fail here, in one line
    except Exception as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    metrics = HosterMetrics().attach(hoster) if args.metrics_port is not None else None
    install_signal_handlers(hoster)
    try:
        hoster.start()
        server = MetricsServer(metrics.registry, args.metrics_host, args.metrics_port) if metrics else None
    except Exception as e:
        hoster.shutdown()
        print(f"error: {e}", file=sys.stderr)
        return 1
    gc.freeze()  # the start-up heap (torch, transformers, hivemind) is never garbage: keep it out of collections
    print(f"READY {hoster.peer_id} {hoster.maddrs[0]}", flush=True)  # maddrs: direct, non-loopback first
    while not hoster.wait(0.5):
        pass
    if server is not None:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
