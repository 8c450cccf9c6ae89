"""What being idle costs on this machine: the same work right after other work vs after a pause.

    .venv/bin/python -m benchmarks.idle_penalty
    .venv/bin/python -m benchmarks.idle_penalty --quick

In a chain of k hosters each process computes for 1/k of a token and then waits (the other
hosters and the client run) until its next step, about 30 ms later on model (a) with 3
hosters; a single hoster waits only for the client's LM head and two messages. This script
runs, in one process, interleaved:

- a decode step through 4 blocks of the model (the hoster's own `Backend`, as in a 3-hoster
  chain) back to back, and after sleeping 5 ms and 30 ms;
- a cross-thread hand-off (`run_coroutine_threadsafe` of an empty coroutine and its result:
  what a hoster's event loop and compute thread, or a client and its event loop, do per step)
  back to back and after the same pauses.

It prints medians and the ratio to back-to-back. On the 2-vCPU VM these goals were measured
on, a pause of 30 ms made the next step ~1.3-1.5x slower and the next hand-off ~4x slower:
the cost is paid once per hoster per token in a chain, not by local generation.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import sys
import threading
import time

if not __package__:  # also runnable as `python benchmarks/<name>.py`
    import pathlib as _pathlib

    sys.path.insert(0, str(_pathlib.Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import MODELS, ensure_model, exit_on_sigterm, fmt_table, load_avg, median, save_results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="a")
    p.add_argument("--blocks", type=int, default=4, help="blocks per step (4 = one hoster of a 3-hoster chain of a)")
    p.add_argument("--pauses-ms", default="0,5,30")
    p.add_argument("--samples", type=int, default=60)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="idle-penalty")
    args = p.parse_args(argv)
    exit_on_sigterm()
    if args.quick:
        args.model, args.samples, args.passes, args.out = "quick", 20, 1, "idle-penalty-quick"
    from hoster.backend import Backend, _Task
    from subnet.model.blocks import load_blocks

    spec = MODELS[args.model]
    blocks = min(args.blocks, spec.num_layers)
    span = load_blocks(ensure_model(spec), 0, blocks, progress=False)
    backend = Backend(span)
    session = backend.open_session(0, blocks, 1, 1 << 16)
    hidden = spec.hidden_size
    position = [0]

    def step(n: int = 1) -> None:  # on this thread: the backend's compute path without its queue
        task = _Task(concurrent.futures.Future(), torch.randn(1, n, hidden), 0, blocks, session, position[0])
        backend._run_round([task])
        task.future.result()
        position[0] = position[0] + n if position[0] < 4096 else 16

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def nothing() -> None:
        return None

    def handoff() -> None:
        asyncio.run_coroutine_threadsafe(nothing(), loop).result()

    step(16)
    for _ in range(10):
        step()
    pauses = [float(x) / 1000 for x in args.pauses_ms.split(",")]
    start = load_avg()
    samples: dict[str, dict[float, list[float]]] = {"decode step": {x: [] for x in pauses},
                                                     "thread hand-off": {x: [] for x in pauses}}
    for _ in range(args.passes):
        for what, fn in (("decode step", step), ("thread hand-off", handoff)):
            for pause in pauses:
                for _ in range(args.samples):
                    if pause:
                        time.sleep(pause)
                    t0 = time.perf_counter()
                    fn()
                    samples[what][pause].append(time.perf_counter() - t0)
    backend.shutdown()
    loop.call_soon_threadsafe(loop.stop)
    rows, results = [], {}
    for what, by_pause in samples.items():
        base = median(by_pause[pauses[0]])
        for pause, xs in by_pause.items():
            m = median(xs)
            rows.append([what, f"{pause * 1000:g}", f"{m * 1e3:.3f}", f"{m / base:.2f}x"])
            results.setdefault(what, {})[f"{pause * 1000:g}"] = {"median_s": m, "ratio": m / base}
    print(f"model {args.model}, {blocks} blocks per decode step, {args.samples} x {args.passes} samples each")
    print(fmt_table(["what", "pause before, ms", "median ms", f"vs {pauses[0] * 1000:g} ms pause"], rows))
    path = save_results(args.out, {"model": spec.__dict__, "blocks": blocks, "load_avg_at_start": start,
                                   "results": results, "load_avg_at_end": load_avg()})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
