"""`python -m hoster --model PATH [--blocks a:b] ...`: one hoster as a process.

Prints exactly one line `READY <peer_id> <maddr>` on stdout once it serves (tests and the
devnet wait for it); logs go to stderr. SIGINT/SIGTERM withdraw the announcement and
close open sessions cleanly, then the process exits 0.
"""

from __future__ import annotations

from subnet.model.process_env import set_thread_pool_defaults

set_thread_pool_defaults()  # before torch and numpy start their thread pools

import argparse  # noqa: E402
import sys  # noqa: E402

from hoster.compiled import kernel_for_compile  # noqa: E402
from hoster.server import Hoster, install_signal_handlers, parse_blocks  # noqa: E402
from subnet.model.kernels import KERNELS, linear_kernel  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hoster", description="serve transformer blocks over the swarm")
    p.add_argument("--model", required=True, help="model directory or hub id")
    p.add_argument("--model-name", default=None, help="DHT name of the model (default: derived from --model)")
    p.add_argument("--blocks", default=None, help="block range a:b (default: chosen from swarm coverage)")
    p.add_argument("--num-blocks", type=int, default=None, help="how many blocks to serve when --blocks is absent")
    p.add_argument("--initial-peers", nargs="*", default=[], help="multiaddrs of peers to join")
    p.add_argument("--host-maddrs", nargs="*", default=None, help="libp2p listen multiaddrs (default 127.0.0.1)")
    p.add_argument("--node-key", default=None, help="node key file (default: a fresh key)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache-tokens", type=int, default=None, help="KV cache budget in tokens")
    p.add_argument("--cache-bytes", type=int, default=None, help="KV cache budget in bytes (instead of tokens)")
    p.add_argument("--session-timeout", type=float, default=60.0, help="idle seconds before a session expires")
    p.add_argument("--announce-period", type=float, default=15.0)
    p.add_argument("--announce-ttl", type=float, default=60.0)
    p.add_argument("--gather-window", type=float, default=0.002,
                   help="seconds to wait for more decode steps to batch while other sessions are active")
    p.add_argument("--rebalance-interval", type=float, default=None, help="seconds between coverage checks")
    p.add_argument("--throughput", type=float, default=None,
                   help="announced tokens/s (default: measured at start-up)")
    p.add_argument("--linear-kernel", choices=KERNELS, default=None,
                   help="what multiplies the blocks' linear layers (subnet/model/kernels.py; default: "
                        "MESH_LINEAR_KERNEL or onednn; blas is faster for one sequence at a time)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile one-session decode steps (hoster/compiled.py): ~1.2x faster steps "
                        "for a lone session after a start-up compile; uses the torch linear kernel")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from keys.node_key import NodeKey
    from subnet.logs import setup_logging

    setup_logging(args.log_level)
    start = end = None
    try:
        if args.blocks:
            start, end = parse_blocks(args.blocks)
        key = NodeKey.load(args.node_key) if args.node_key else NodeKey.generate()
        linear_kernel(args.linear_kernel)  # a bad MESH_LINEAR_KERNEL fails here, in one line
        if args.compile:
            kernel_for_compile(args.linear_kernel)  # --compile with another kernel: one line too
    except Exception as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    hoster = Hoster(
        args.model, node_key=key, initial_peers=args.initial_peers, host_maddrs=args.host_maddrs, start=start,
        end=end, num_blocks=args.num_blocks, dtype=args.dtype, device=args.device, cache_tokens=args.cache_tokens,
        cache_bytes=args.cache_bytes, model_name=args.model_name, session_timeout=args.session_timeout,
        announce_period=args.announce_period, announce_ttl=args.announce_ttl, gather_window=args.gather_window,
        rebalance_interval=args.rebalance_interval, throughput=args.throughput, progress=not args.no_progress,
        linear_kernel=args.linear_kernel, compile_decode=args.compile,
    )
    install_signal_handlers(hoster)
    try:
        hoster.start()
    except Exception as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"READY {hoster.peer_id} {hoster.maddrs[0]}", flush=True)
    while not hoster.wait(0.5):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
