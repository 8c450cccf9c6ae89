"""Aggregate tokens/s with 1, 4 and 8 concurrent sessions on one hoster.

    .venv/bin/python -m benchmarks.concurrency           # model a, 64 new tokens per session
    .venv/bin/python -m benchmarks.concurrency --quick   # small model, 8 new tokens

One hoster process serves every block of the model; one client process runs N sessions
at once (one thread each, as an API server would), each a greedy `generate` of the same
length from its own prompt. Aggregate tokens/s = all new tokens / wall time of the round.
"end-to-end" includes each session's client work (embedding, LM head: a 32000 x hidden
matrix read per token per session) on the same two cores as the hoster; "hoster only"
drives the same sessions at the protocol level (hidden states in, hidden states out) so
the number shows what the hoster itself sustains.
The hoster computes decode steps of concurrent sessions that arrive together as one batch;
`--gather-window` values (seconds the compute thread waits for more steps) are compared,
each on its own hoster process.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import threading
import time

if not __package__:  # also runnable as `python benchmarks/<name>.py`
    import pathlib as _pathlib

    sys.path.insert(0, str(_pathlib.Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import (
    MODELS,
    HosterProcs,
    client,
    ensure_model,
    exit_on_sigterm,
    fmt_table,
    load_avg,
    median,
    save_results,
)


def run_round(model, prompts: list[torch.Tensor], new_tokens: int) -> float:
    """Wall seconds for len(prompts) concurrent greedy generations."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(prompts) + 1)

    def work(ids):
        try:
            barrier.wait()
            model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


def run_round_raw(model, n_sessions: int, new_tokens: int, prompt_len: int) -> float:
    """Wall seconds for `n_sessions` concurrent protocol-level sessions (no client-side compute).

    Each session opens an `rpc_inference` stream over every block, prefills `prompt_len`
    random hidden states, then sends `new_tokens` one-position steps, all on the client's
    event loop: this isolates the hoster (the client's LM head would otherwise compete for
    the same two cores).
    """
    import asyncio

    from subnet.client.transport import InferenceStream

    mgr = model.manager
    hidden = model.config.hidden_size
    route = model.wait_until_servable(30)
    peer, blocks = route[0].peer_id, (route[0].start, route[0].end)

    async def one(i: int) -> None:
        g = torch.Generator().manual_seed(i)
        s = await InferenceStream.open(mgr.p2p, peer, mgr.model_uid, *blocks, prompt_len + new_tokens, 1, 30)
        try:
            await s.step(torch.randn(1, prompt_len, hidden, generator=g), 0, 60)
            x = torch.randn(1, 1, hidden, generator=g)
            for t in range(new_tokens):
                x = await s.step(x, prompt_len + t, 60)
        finally:
            await s.close()

    async def all_sessions() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n_sessions)))
        return time.perf_counter() - t0

    return model.runtime.run(all_sessions(), timeout=600)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="a")
    p.add_argument("--sessions", default="1,4,8")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--gather-windows", default="0,0.002", help="hoster --gather-window values to compare")
    p.add_argument("--hoster-args", default="",
                   help="more hoster options, e.g. --hoster-args=--compile (results/concurrency-compiled.json)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="concurrency")
    args = p.parse_args(argv)
    exit_on_sigterm()
    if args.quick:
        args.model, args.new_tokens, args.runs, args.sessions, args.out = "quick", 8, 1, "1,4", "concurrency-quick"
    start_load = load_avg()
    spec = MODELS[args.model]
    path = ensure_model(spec)
    counts = [int(x) for x in args.sessions.split(",")]
    windows = [float(x) for x in args.gather_windows.split(",")]
    gen = torch.Generator().manual_seed(7)
    prompts = [torch.randint(0, spec.vocab_size, (1, args.prompt_len), generator=gen) for _ in range(max(counts))]
    results: dict = {"model": spec.__dict__, "new_tokens": args.new_tokens, "runs": args.runs,
                     "hoster_args": args.hoster_args, "by_window": {},
                     "hoster_only_by_window": {}}
    with HosterProcs() as procs, contextlib.ExitStack() as stack:
        names = {w: f"{spec.name}-gw{w:g}" for w in windows}
        for i, w in enumerate(windows):
            procs.start(path, (0, spec.num_layers), model_name=names[w], wait=i == 0,
                        extra=["--gather-window", str(w), "--cache-tokens", str(64 * 1024),
                               *shlex.split(args.hoster_args)])
        for proc in procs.procs:
            procs.wait(proc)
        models = {w: stack.enter_context(client(path, procs.initial_peers, names[w])) for w in windows}
        for m in models.values():  # warm-up: every batch size once
            for n in counts:
                run_round(m, prompts[:n], 4)
            run_round_raw(m, max(counts), 4, args.prompt_len)
        modes = {"end-to-end": lambda w, n: run_round(models[w], prompts[:n], args.new_tokens),
                 "hoster only": lambda w, n: run_round_raw(models[w], n, args.new_tokens, args.prompt_len)}
        for mode, fn in modes.items():
            times: dict[float, dict[int, list[float]]] = {w: {n: [] for n in counts} for w in windows}
            for _ in range(args.runs):
                for n in counts:
                    for w in windows:
                        times[w][n].append(fn(w, n))
            for w in windows:
                agg = {n: n * args.new_tokens / median(times[w][n]) for n in counts}
                results["by_window" if mode == "end-to-end" else "hoster_only_by_window"][f"{w:g}"] = {
                    "aggregate_tokens_per_s": {str(n): v for n, v in agg.items()},
                    "times_s": {str(n): v for n, v in times[w].items()}}
    rows = []
    for mode, key in (("end-to-end", "by_window"), ("hoster only", "hoster_only_by_window")):
        for w, r in results[key].items():
            agg = r["aggregate_tokens_per_s"]
            one = agg[str(counts[0])]
            rows += [[mode, w, n, f"{agg[str(n)]:.1f}", f"{agg[str(n)] / one:.2f}x", f"{agg[str(n)] / int(n):.1f}"]
                     for n in map(str, counts)]
    print(fmt_table(["mode", "gather window s", "sessions", "aggregate tok/s", "vs 1 session", "tok/s per session"],
                    rows))
    path_out = save_results(args.out, {"load_avg_at_start": start_load, **results, "load_avg_at_end": load_avg()})
    print(f"load average {start_load} -> {load_avg()}; wrote {path_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
