"""Where the time to first token goes through a chain of hosters: a timeline of one prefill.

    .venv/bin/python -m benchmarks.profile_ttft --model a --hosters 3
    .venv/bin/python -m benchmarks.profile_ttft --quick

`benchmarks.generation` measures TTFT (`generate(max_new_tokens=1)` on a 512-token prompt, the
session opening included) against the fastest local row; this says where a chain's extra
milliseconds are. Real hosters (`python -m benchmarks.traced_hoster`) and the real client with
default flags; every pass uses a fresh prompt (the hosters' prefix cache must not skip the
prefill). The parts recorded in each process (`benchmarks/chain_trace.py`, one clock for all
processes) are laid out on one time axis from the start of `generate`: the client's session
opening, embedding, encode, waits, receipt checks and head; each hoster's session opening,
decode, span forward, push, receipt and encode. Each row is the median over passes of the
part's start and end. Next to it, the lean local loop's prefill of the same prompt
(`benchmarks/lean_local.py`: the same block code in one process) split the same way.

`--delay MS` puts every hoster behind a userspace delay proxy (as `benchmarks.wan` does): each
link, client to hoster and hoster to hoster, then carries MS one way, and the timeline shows
which parts wait on the network (how many one-way trips lie on the critical path).

Reading it: a part that starts only after another one ends is on the critical path; parts
that overlap run side by side (on this 2-core machine they still share the cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # also runnable as `python benchmarks/<name>.py`
    import pathlib as _pathlib

    sys.path.insert(0, str(_pathlib.Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.chain_trace import TRACE_ENV, install_client, take_records, timed  # noqa: E402
from benchmarks.common import (  # noqa: E402
    MODELS,
    chain_spans,
    client,
    ensure_model,
    exit_on_sigterm,
    fmt_table,
    load_avg,
    median,
    save_results,
    wait_decode_paths,
)
from benchmarks.lean_local import LeanLocal  # noqa: E402
from benchmarks.profile_chain import Records, collect  # noqa: E402
from benchmarks.wan import start_chain  # noqa: E402
from subnet.swarm.delay_proxy import ProxyThread  # noqa: E402

Timeline = dict[tuple[str, str, int], tuple[float, float]]  # (process, part, k-th call) -> (start, end) ms


def timeline(processes: dict[str, Records], t0: float, t1: float) -> Timeline:
    """Every recorded call that started inside [t0, t1], keyed by process, part and occurrence,
    as milliseconds from t0 (records of other parts of the run are left out)."""
    out: Timeline = {}
    for proc, records in processes.items():
        seen: dict[str, int] = {}
        for name, a, b in sorted(records, key=lambda r: r[1]):
            if not t0 <= a <= t1 or name.endswith(("_ops", "_inner")):
                continue
            k = seen[name] = seen.get(name, -1) + 1
            out[(proc, name, k)] = ((a - t0) * 1000, (b - t0) * 1000)
    return out


def median_timeline(passes: list[Timeline]) -> list[tuple[str, str, int, float, float, int]]:
    """Rows (process, part, k, start, end, passes that had it) with median start/end, in start order."""
    keys = {k for p in passes for k in p}
    rows = []
    for key in keys:
        have = [p[key] for p in passes if key in p]
        rows.append((*key, median([s for s, _ in have]), median([e for _, e in have]), len(have)))
    return sorted(rows, key=lambda r: (r[3], r[4]))


def lean_prefill(lean: LeanLocal, prompt: torch.Tensor) -> dict[str, float]:
    """The lean local loop's TTFT (ms), split into embedding, blocks and head."""
    take_records()
    t0 = time.perf_counter()
    lean.generate(prompt, 1)
    total = (time.perf_counter() - t0) * 1000
    records = take_records()
    parts = {name: sum((b - a) * 1000 for n, a, b in records if n == name) for name in ("embed", "lean_step", "head")}
    return {"total": total, **parts}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="a")
    p.add_argument("--hosters", type=int, default=3)
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--runs", type=int, default=5, help="passes, each with a fresh prompt")
    p.add_argument("--delay", type=float, default=0.0, help="one-way delay (ms) on every link to a hoster")
    p.add_argument("--quick", action="store_true", help="small model, 64-token prompt, two passes")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    exit_on_sigterm()
    if args.quick:
        args.model, args.prompt_len, args.runs = "quick", 64, 2
    spec = MODELS[args.model]
    path = ensure_model(spec)
    spans = chain_spans(spec.num_layers, args.hosters)
    start_load = load_avg()
    lean = LeanLocal(path)
    lean.step = timed("lean_step", lean.step)
    trace = Path(tempfile.mkdtemp(prefix="mesh-ttft-trace-"))
    os.environ[TRACE_ENV] = str(trace)  # the hosters inherit it
    install_client()
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, spec.vocab_size, (1, args.prompt_len), generator=gen) for _ in range(args.runs + 1)]
    chain_passes: list[Timeline] = []
    totals: list[float] = []
    lean_passes: list[dict[str, float]] = []
    proxies = ProxyThread()
    try:
        with start_chain(path, spans, proxies, model_name=f"{spec.name}-ttft", launcher="benchmarks.traced_hoster") \
                as procs:
            proxies.set_delay(args.delay / 1000)
            pids = [pr.proc.pid for pr in procs.procs]
            names = {str(pid): f"hoster {a}:{b}" for pid, (a, b) in zip(pids, spans)}
            with client(path, procs.initial_peers, f"{spec.name}-ttft") as m:
                paths = wait_decode_paths(m)  # hosters compile in the background after start: not beside us
                m.generate(prompts[-1], max_new_tokens=1)  # warm-up (its own prompt)
                lean.generate(prompts[-1], 1)
                collect(trace, pids, "warm")
                take_records()
                for i in range(args.runs):
                    t0 = time.perf_counter()
                    m.generate(prompts[i], max_new_tokens=1)
                    t1 = time.perf_counter()
                    totals.append((t1 - t0) * 1000)
                    processes = {"client": take_records()}
                    for pid, recs in collect(trace, pids, f"r{i}").items():
                        processes[names[str(pid)]] = recs
                    chain_passes.append(timeline(processes, t0, t1))
                    lean_passes.append(lean_prefill(lean, prompts[i]))
    finally:
        proxies.close()
    rows = median_timeline(chain_passes)
    ttft, lean_ttft = median(totals), median([lp["total"] for lp in lean_passes])
    table = [[proc, part if k == 0 else f"{part} #{k + 1}", f"{s:.1f}", f"{e:.1f}", f"{e - s:.1f}",
              "" if n == len(chain_passes) else f"{n}/{len(chain_passes)}"] for proc, part, k, s, e, n in rows]
    lean_parts = {k: median([lp[k] for lp in lean_passes]) for k in lean_passes[0]}
    print(f"model {args.model}, {args.hosters} hosters (default flags), {args.prompt_len}-token prompt, "
          f"one-way delay {args.delay:g} ms per link, "
          f"medians of {args.runs} passes; load {start_load} -> {load_avg()}")
    print(f"decode paths the hosters chose: {', '.join(sorted(paths.values()))}")
    print(f"TTFT {ttft:.1f} ms through the chain, {lean_ttft:.1f} ms in the lean local loop "
          f"({ttft / lean_ttft:.2f}x): lean embed {lean_parts['embed']:.1f}, blocks {lean_parts['lean_step']:.1f}, "
          f"head {lean_parts['head']:.1f} ms")
    print(fmt_table(["process", "part", "start ms", "end ms", "ms", "passes"], table))
    out = save_results(args.out or f"profile_ttft-{args.model}-{args.hosters}h", {
        "load_avg_at_start": start_load, "load_avg_at_end": load_avg(), "model": spec.__dict__,
        "hosters": args.hosters, "decode_paths": sorted(paths.values()), "delay_ms": args.delay,
        "prompt_len": args.prompt_len, "ttft_ms": totals,
        "lean": lean_passes,
        "timeline": [list(r) for r in rows],
        "passes": [[[*k, s, e] for k, (s, e) in p.items()] for p in chain_passes]})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
