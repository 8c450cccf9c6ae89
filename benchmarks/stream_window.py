"""What a prefill-sized message costs over a WAN link: a fresh libp2p stream vs one already used.

    .venv/bin/python -m benchmarks.stream_window               # 1 MiB at 20 ms one-way
    .venv/bin/python -m benchmarks.stream_window --delay 5 --size 4194304

Two hivemind P2P nodes on loopback, the receiver behind a userspace delay proxy
(`subnet.swarm.delay_proxy`: every byte crosses `--delay` ms each way). Timed, interleaved over
`--passes`: a one-byte round trip (the link's floor, 2 x delay), and `--size` bytes answered by
one byte, sent on a freshly opened stream and then again on the same stream after it carried a
few such messages. A session's step requests and replies travel on the session's own stream, so
its first prompt-sized message is a "fresh" one; hoster-to-hoster pushes reuse one stream per
peer. Each mode prints its median and that median in one-way delays.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

if not __package__:  # also runnable as `python benchmarks/<name>.py`
    import pathlib as _pathlib

    sys.path.insert(0, str(_pathlib.Path(__file__).resolve().parent.parent))

from benchmarks.common import exit_on_sigterm, fmt_table, load_avg, median, save_results  # noqa: E402
from chain.devnet.process import free_port  # noqa: E402
from subnet.swarm.delay_proxy import DelayProxy  # noqa: E402

REUSES = 3  # messages a stream carries before it counts as "reused"


async def _ack_each(_info, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    from hivemind.p2p import P2P

    try:
        while True:
            await P2P.receive_raw_data(reader)
            await P2P.send_raw_data(b"k", writer)
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
        pass  # the sender closed, or the run ended


async def measure(delay_ms: float, size: int, passes: int) -> dict[str, list[float]]:
    """Seconds per acknowledged message, per mode, one sample per pass."""
    from hivemind.p2p import P2P

    real = free_port()
    proxy = await DelayProxy(("127.0.0.1", real), delay_up=delay_ms / 1000).start()
    receiver = sender = None
    try:
        receiver = await P2P.create(host_maddrs=[f"/ip4/127.0.0.1/tcp/{real}"],
                                    announce_maddrs=[f"/ip4/127.0.0.1/tcp/{proxy.port}"])
        sender = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"],
                                  initial_peers=[f"/ip4/127.0.0.1/tcp/{proxy.port}/p2p/{receiver.peer_id}"])
        await receiver.add_binary_stream_handler("ack", _ack_each)
        payload = b"x" * size
        out: dict[str, list[float]] = {"one byte": [], "fresh stream": [], "reused stream": []}

        async def timed(reader, writer, data: bytes) -> float:
            t0 = time.perf_counter()
            await P2P.send_raw_data(data, writer)
            await P2P.receive_raw_data(reader)
            return time.perf_counter() - t0

        for _ in range(passes + 1):  # the first pass warms the connection up and is dropped
            _, reader, writer = await sender.call_binary_stream_handler(receiver.peer_id, "ack")
            try:
                one = await timed(reader, writer, b"s")
                fresh = await timed(reader, writer, payload)  # the stream's first big message
                for _ in range(REUSES):
                    reused = await timed(reader, writer, payload)
            finally:
                writer.close()
            for mode, value in zip(out, (one, fresh, reused)):
                out[mode].append(value)
        return {mode: values[1:] for mode, values in out.items()}
    finally:
        for node in (sender, receiver):
            if node is not None:
                await node.shutdown()
        await proxy.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--delay", type=float, default=20.0, help="one-way delay in ms")
    p.add_argument("--size", type=int, default=1 << 20, help="bytes of the big message (1 MiB: a 512-position "
                                                             "prefill of model a in float32)")
    p.add_argument("--passes", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="5 ms, 256 KiB, 2 passes")
    p.add_argument("--out", default="stream_window")
    args = p.parse_args(argv)
    exit_on_sigterm()
    if args.quick:
        args.delay, args.size, args.passes, args.out = 5.0, 1 << 18, 2, "stream_window-quick"
    start_load = load_avg()
    samples = asyncio.run(measure(args.delay, args.size, args.passes))
    rows = []
    for mode, values in samples.items():
        m = median(values)
        rows.append([mode, f"{m * 1000:.1f}", f"{m * 1000 / args.delay:.1f}" if args.delay else "-",
                     " ".join(f"{v * 1000:.0f}" for v in values)])
    print(f"{args.size} bytes vs one byte, answered by one byte, one-way delay {args.delay:g} ms; medians of "
          f"{args.passes} passes; load {start_load} -> {load_avg()}")
    print(fmt_table(["message", "ms", "one-way delays", "all passes (ms)"], rows))
    out = save_results(args.out, {"delay_ms": args.delay, "size": args.size, "passes": args.passes,
                                  "load_avg_at_start": start_load, "load_avg_at_end": load_avg(),
                                  "seconds": samples})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
