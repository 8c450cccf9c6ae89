"""What one message between two nodes costs, apart from any model: the floor under every hop.

    .venv/bin/python -m benchmarks.transport
    .venv/bin/python -m benchmarks.transport --quick

A decode step through a chain of k hosters is 2k messages or more on the wire (the client's
step request and each hoster's reply, plus hoster-to-hoster pushes). This script times, in one
process, interleaved over `--passes`:

- a round trip of one payload over a hivemind P2P binary stream (what sessions use: two p2pd
  daemons on loopback), with the CPU split between this Python process and the daemons;
- the same round trip over a plain asyncio TCP connection on loopback (no daemons): what the
  libp2p layer adds on top of the kernel;
- the project's per-message work on the payload: `subnet.swarm.wire` encoding and decoding with
  the protobuf envelope, the receipt's output hash and Ed25519 signature (hoster), and the
  signature check (client).

Payloads: one decode row and one 512-position prefill of models (a) and (b), float32. CPU
times are per message (a round trip is two). Every loop is bounded by `--messages`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

if not __package__:  # also runnable as `python benchmarks/<name>.py`
    import pathlib as _pathlib

    sys.path.insert(0, str(_pathlib.Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import MODELS, exit_on_sigterm, fmt_table, load_avg, median, save_results, timed_runs  # noqa: E402

PREFILL = 512


def children_cpu_seconds() -> float:
    """User + system CPU of this process's live children (the p2pd daemons), from /proc."""
    tick, me, total = os.sysconf("SC_CLK_TCK"), os.getpid(), 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def payloads(models: list[str]) -> dict[str, int]:
    """Name -> bytes of a float32 hidden state: one decode row, one 512-position prefill."""
    out = {}
    for m in models:
        hidden = MODELS[m].hidden_size
        out[f"{m}: decode row"] = hidden * 4
        out[f"{m}: prefill {PREFILL}"] = PREFILL * hidden * 4
    return out


async def _round_trips(send, receive, payload: bytes, n: int) -> tuple[float, float, float]:
    """(wall s, this process's CPU s, children's CPU s) for n sequential round trips."""
    c0, d0, t0 = time.process_time(), children_cpu_seconds(), time.perf_counter()
    for _ in range(n):
        await send(payload)
        if len(await receive()) != len(payload):
            raise RuntimeError("the echo lost bytes")
    return time.perf_counter() - t0, time.process_time() - c0, children_cpu_seconds() - d0


class P2PPair:
    """Two hivemind P2P nodes on loopback and one open binary stream echoing every message back."""

    async def start(self) -> P2PPair:
        from hivemind.p2p import P2P

        self.P2P = P2P
        self.a = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        self.b = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=await self.a.get_visible_maddrs())
        await self.b.add_binary_stream_handler("echo", self._echo)
        _, self.reader, self.writer = await self.a.call_binary_stream_handler(self.b.peer_id, "echo")
        return self

    async def _echo(self, _info, reader, writer) -> None:
        try:
            while True:
                await self.P2P.send_raw_data(await self.P2P.receive_raw_data(reader), writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client closed, or the run ended

    async def send(self, data: bytes) -> None:
        await self.P2P.send_raw_data(data, self.writer)

    async def receive(self) -> bytes:
        return await self.P2P.receive_raw_data(self.reader)

    async def close(self) -> None:
        self.writer.close()
        await self.a.shutdown()
        await self.b.shutdown()


class TCPPair:
    """A length-prefixed echo over one asyncio TCP connection on loopback."""

    async def start(self) -> TCPPair:
        self.server = await asyncio.start_server(self._echo, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        return self

    @staticmethod
    async def _echo(reader, writer) -> None:
        try:
            while True:
                n = int.from_bytes(await reader.readexactly(8), "big")
                writer.write(n.to_bytes(8, "big") + await reader.readexactly(n))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client closed, or the run ended

    async def send(self, data: bytes) -> None:
        self.writer.write(len(data).to_bytes(8, "big") + data)
        await self.writer.drain()

    async def receive(self) -> bytes:
        n = int.from_bytes(await self.reader.readexactly(8), "big")
        return await self.reader.readexactly(n)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()
        self.server.close()
        await self.server.wait_closed()


def per_message_work(nbytes: int, n: int) -> dict[str, float]:
    """Seconds per call of the project's own per-message work on a float32 payload of nbytes."""
    from hivemind.proto import runtime_pb2

    from consensus.evidence import output_hash
    from keys.node_key import NodeKey, verify
    from subnet.swarm.wire import decode_tensor, encode_tensor

    x = torch.randn(1, nbytes // 4 // 64, 64)
    key = NodeKey.generate()
    message = b"r" * 200  # a receipt's signed message is of this order
    sig = key.sign(message)

    def codec() -> None:
        raw = runtime_pb2.ExpertResponse(tensors=[encode_tensor(x)], metadata=b"{}").SerializeToString()
        resp = runtime_pb2.ExpertResponse()
        resp.ParseFromString(raw)
        decode_tensor(resp.tensors[0])

    out = {}
    for name, fn in (("wire encode+decode", codec), ("output hash", lambda: output_hash(x)),
                     ("Ed25519 sign", lambda: key.sign(message)),
                     ("Ed25519 verify", lambda: verify(key.public_key, message, sig))):
        out[name] = median(timed_runs(fn, n))
    return out


async def measure(sizes: dict[str, int], messages: int, passes: int) -> dict:
    pairs = {"hivemind p2p": await P2PPair().start(), "asyncio tcp": await TCPPair().start()}
    results: dict = {name: {t: {"wall": [], "cpu": [], "daemons": []} for t in pairs} for name in sizes}
    try:
        for _ in range(passes):
            for name, nbytes in sizes.items():
                payload = os.urandom(nbytes)
                n = max(5, messages if nbytes <= 65536 else messages // 20)
                for transport, pair in pairs.items():
                    await _round_trips(pair.send, pair.receive, payload, 5)  # warm
                    wall, cpu, daemons = await _round_trips(pair.send, pair.receive, payload, n)
                    r = results[name][transport]
                    r["wall"].append(wall / n)
                    r["cpu"].append(cpu / n / 2)
                    r["daemons"].append(daemons / n / 2)
    finally:
        for pair in pairs.values():
            await pair.close()
    return {name: {t: {k: median(v) for k, v in r.items()} for t, r in by.items()} for name, by in results.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="a,b")
    p.add_argument("--messages", type=int, default=1000, help="round trips per small payload (prefills: 1/20)")
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="transport")
    args = p.parse_args(argv)
    exit_on_sigterm()
    if args.quick:
        args.models, args.messages, args.passes, args.out = "a", 100, 1, "transport-quick"
    sizes = payloads(args.models.split(","))
    start = load_avg()
    trips = asyncio.run(measure(sizes, args.messages, args.passes))
    work = {name: per_message_work(nbytes, max(20, args.messages // 10)) for name, nbytes in sizes.items()}
    rows = []
    for name, nbytes in sizes.items():
        p2p, tcp, w = trips[name]["hivemind p2p"], trips[name]["asyncio tcp"], work[name]
        rows.append([name, f"{nbytes / 1024:g}", f"{p2p['wall'] * 1e3:.3f}", f"{tcp['wall'] * 1e3:.3f}",
                     f"{p2p['cpu'] * 1e3:.3f}", f"{p2p['daemons'] * 1e3:.3f}", f"{tcp['cpu'] * 1e3:.3f}",
                     f"{w['wire encode+decode'] * 1e3:.3f}", f"{w['output hash'] * 1e3:.3f}",
                     f"{w['Ed25519 sign'] * 1e3:.3f}", f"{w['Ed25519 verify'] * 1e3:.3f}"])
    print(f"load average at start: {start}; {args.passes} pass(es), medians")
    print(fmt_table(["payload", "KiB", "p2p RTT ms", "tcp RTT ms", "p2p python CPU/msg ms", "p2pd CPU/msg ms",
                     "tcp CPU/msg ms", "wire enc+dec ms", "output hash ms", "sign ms", "verify ms"], rows))
    path = save_results(args.out, {"load_avg_at_start": start, "load_avg_at_end": load_avg(), "sizes": sizes,
                                   "round_trips": trips, "per_message_work": work})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
