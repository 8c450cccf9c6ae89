"""Greedy generation through 1 and 3 local hosters vs `transformers` generate in one process.

    .venv/bin/python -m benchmarks.generation            # models a and b (about 10 minutes)
    .venv/bin/python -m benchmarks.generation --quick    # a small model, one pass (about 1 minute)

Same checkpoint (random weights, fp32), same prompt, 2 torch threads in every process.
Tokens/s is new tokens / wall time of a whole `generate` call (prefill included), time to
first token is `generate(max_new_tokens=1)` on a 512-token prompt (session open included).

Rows and what every ratio is against:
  - "ceiling (bandwidth)": measured read bandwidth of this machine (STREAM-style, 2 threads,
    best of several runs, one measurement per pass) / weight bytes one decode step reads
    (all blocks + final norm + LM head + one embedding row; `benchmarks/ceiling.py`). What
    no implementation can beat; its "vs fastest local" shows the headroom left.
  - "local": `transformers` generate; "local, <kernel>": the same with that linear kernel.
  - "local, lean loop": the project's own block code in one process (`benchmarks/lean_local.py`:
    the hosters' `BlockSpan` + KV store, the client's embeddings and LM head, no network);
    "local, lean loop, compiled": the same with one-position steps through the hosters' compiled
    decode step (`hoster/compiled.py`), which default hosters serve where it measured faster
    (`hoster/compile_auto.py`; the run waits until every hoster chose, and records the choices).
  - **"vs fastest local"**: each row's tokens/s over the fastest of the local rows (transformers
    with any kernel, lean loop) for that length, measured in this run; TTFT over the lowest
    local TTFT. Not against the ceiling ("vs ceiling" is its own column).
  - "8 sessions vs 1" (separate table): aggregate tokens/s of 8 concurrent `generate` calls
    (one client, threads) over one session's, through each chain (`benchmarks.concurrency`'s
    round), interleaved with the rest.
Runs are interleaved (local, 1 hoster, 3 hosters, local, ...) so load changes hit all
alike, each pass starting one row later; medians after one warm-up. Every pass has prompts
of its own (the same for every row of the pass): hosters keep closed sessions' prefixes, and a
repeated prompt would skip its prefill on the hosters only. The distributed tokens
are checked against local. Chains of several hosters forward hoster to hoster (push, the
default); the "no push" row runs the same chain hop by hop through the client, to show what
forwarding buys in the same run.

Hosters and clients run their linear layers on a faster kernel than plain `transformers`
(`subnet.model.kernels`: `onednn` by default, `blas` as an option; plain `transformers` uses
torch's MKL). So that the ratios do not hide what a kernel alone is worth, "local, <kernel>"
rows run the same local model with that kernel (`--local-kernels`), and every row is also
given relative to "local, <default kernel>"; "3 hosters, <kernel>" rows (`--chain-variants`)
run the multi-hoster chain again with `--linear-kernel <kernel>` hosters (their client uses
the same kernel for its LM head), to show what each kernel does inside a chain in the same
run. "3 hosters, compiled" runs it with `--compile` hosters (`hoster/compiled.py`: one-session
decode steps through a torch.compile'd span; the client as usual).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from collections import Counter

if not __package__:  # also runnable as `python benchmarks/<name>.py`
    import pathlib as _pathlib

    sys.path.insert(0, str(_pathlib.Path(__file__).resolve().parent.parent))

import torch  # noqa: E402  (after benchmarks.common set the thread count)

from benchmarks.ceiling import ceiling_row, measure_bandwidth  # noqa: E402
from benchmarks.common import (  # noqa: E402
    MODELS,
    HosterProcs,
    chain_spans,
    client,
    ensure_model,
    exit_on_sigterm,
    fmt_table,
    load_avg,
    median,
    save_results,
    scrape_metrics,
    wait_decode_paths,
    warm_buckets,
)
from benchmarks.concurrency import run_round  # noqa: E402
from benchmarks.lean_local import LeanLocal  # noqa: E402
from hoster.compiled_batch import DEMAND_STEPS  # noqa: E402
from subnet.logs import setup_logging  # noqa: E402

CEILING, LEAN = "ceiling (bandwidth)", "local, lean loop"
LEAN_COMPILED = "local, lean loop, compiled"


def local_model(path, kernel: str | None = None):
    """transformers' own model; with `kernel`, its linear layers run on that `subnet.model.kernels` kernel."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if kernel:
        from subnet.model.kernels import convert_linears

        convert_linears(model, kernel)
    return model.eval()


def _generate(model, config, ids, n):
    model.manager.config = config
    return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)


def bench_model(key: str, *, new_tokens: list[int], prompt_len: int, ttft_prompt: int, runs: int,
                chains: list[int], compare_push: bool = True, local_kernels: tuple[str, ...] = (),
                chain_variants: tuple[str, ...] = (), sessions: int = 8, session_tokens: int = 64,
                compiled_lean: bool = True) -> dict:
    spec = MODELS[key]
    path = ensure_model(spec)
    gen = torch.Generator().manual_seed(1234)
    prompt = torch.randint(0, spec.vocab_size, (1, prompt_len), generator=gen)
    long_prompt = torch.randint(0, spec.vocab_size, (1, ttft_prompt), generator=gen)
    ref = local_model(path)

    def local_gen(ids, n, model=ref):
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                              do_sample=False)

    from subnet.model.kernels import linear_kernel

    results: dict = {"model": spec.__dict__, "prompt_len": prompt_len, "ttft_prompt": ttft_prompt, "runs": runs,
                     "default_kernel": linear_kernel()}
    with HosterProcs() as procs:
        names = {}
        first = True
        alt_chains = [(k, variant) for k in chains if k > 1 for variant in chain_variants]
        chain_hosters: dict[int, list[str]] = {}  # chain -> its hosters' names (their /metrics: step paths)
        for k in chains:
            names[k] = f"{spec.name}-{k}h"
            for span in chain_spans(spec.num_layers, k):
                proc = procs.start(path, span, model_name=names[k], wait=first, metrics=sessions > 1)
                chain_hosters.setdefault(k, []).append(proc.name)
                first = False
        for k, variant in alt_chains:  # the same chain another way: what the kernel / compiling does there
            for span in chain_spans(spec.num_layers, k):
                procs.start(path, span, model_name=f"{names[k]}-{variant}", wait=False,
                            extra=_variant_args(variant))
        for p in procs.procs:
            procs.wait(p)
        with contextlib.ExitStack() as stack:
            clients = {k: stack.enter_context(client(path, procs.initial_peers, names[k])) for k in chains}
            alt_clients = {(k, variant): stack.enter_context(
                client(path, procs.initial_peers, f"{names[k]}-{variant}",
                       linear_kernel=None if variant == COMPILED else variant))
                for k, variant in alt_chains}
            configs = {"local": local_gen}
            for kernel in local_kernels:
                model = local_model(path, kernel=kernel)
                configs[f"local, {kernel}"] = lambda ids, n, m=model: local_gen(ids, n, m)
            lean = LeanLocal(path)
            configs[LEAN] = lean.generate
            if compiled_lean:  # what hosters with the default flags serve once their compile won
                configs[LEAN_COMPILED] = LeanLocal(path, compiled=True).generate
            # default hosters compile in the background after `hoster_ready`: time the path they chose
            results["decode_paths"] = {f"{k} hoster" + ("s" if k > 1 else ""): sorted(
                wait_decode_paths(clients[k]).values()) for k in chains}
            for k in chains:
                m = clients[k]
                pushing = m.manager.config
                configs[f"{k} hoster" + ("s" if k > 1 else "")] = (
                    lambda ids, n, m=m, c=pushing: _generate(m, c, ids, n))
                if k > 1 and compare_push:  # the same chain hop by hop: what forwarding buys, in this run
                    hop_by_hop = dataclasses.replace(pushing, push=False)
                    configs[f"{k} hosters, no push"] = (
                        lambda ids, n, m=m, c=hop_by_hop: _generate(m, c, ids, n))
                for variant in chain_variants if k > 1 else ():
                    am = alt_clients[(k, variant)]
                    configs[f"{k} hosters, {variant}"] = (
                        lambda ids, n, m=am, c=am.manager.config: _generate(m, c, ids, n))

            # correctness: the same greedy tokens
            expect = local_gen(prompt, max(new_tokens))
            match = {}
            for name, fn in configs.items():
                got = fn(prompt, max(new_tokens))
                same = int((got[0] == expect[0]).long().cumprod(0).sum().item()) - prompt_len
                match[name] = f"{same}/{max(new_tokens)}"
            results["tokens_equal_local"] = match

            # warm-up every path (and the long-prompt path) once
            for fn in configs.values():
                fn(prompt, 4)
                fn(long_prompt, 1)

            tps: dict[str, dict[int, list[float]]] = {c: {n: [] for n in new_tokens} for c in configs}
            ttft: dict[str, list[float]] = {c: [] for c in configs}
            bandwidths = []
            # Hosters keep closed sessions' prefixes (hoster/prefix_cache.py) and would skip a repeated
            # prompt's prefill: every pass (and every concurrent round) gets prompts of its own.
            def fresh(length: int, count: int = 1) -> list[torch.Tensor]:
                return [torch.randint(0, spec.vocab_size, (1, length), generator=gen) for _ in range(count)]

            conc_rows = _chain_rows(chains) if sessions > 1 else {}
            conc: dict[str, dict[int, list[float]]] = {name: {1: [], sessions: []} for name in conc_rows}
            step_paths: dict[str, dict[str, Counter]] = {}  # row -> hoster -> metric deltas over the N-session rounds
            for k in conc_rows.values():  # warm-up of the concurrent path; the hosters compile the
                # batched buckets it asks for (on demand: hoster/compile_auto.py) before anything is timed:
                # rounds until a round asks for no new bucket (the steady state of a hoster under this load)
                states = warm_buckets(lambda k=k: run_round(clients[k], fresh(prompt_len, sessions), DEMAND_STEPS + 8),
                                      {h: procs.metrics_urls[h] for h in chain_hosters[k]})
                shown = (f"{h}: " + ", ".join(f"{b} {st}" for b, st in sorted(s.items())) for h, s in states.items())
                print(f"{k} hoster(s), batched buckets after the warm-up: " + "; ".join(shown))
            for i in range(runs):
                bandwidths.append(measure_bandwidth(runs=5))
                prompt, long_prompt = fresh(prompt_len)[0], fresh(ttft_prompt)[0]  # the same for every row
                order = list(configs)  # each pass starts at another row: none always follows the bandwidth run
                order = [(name, configs[name]) for name in order[i % len(order):] + order[:i % len(order)]]
                for n in new_tokens:
                    for name, fn in order:
                        t0 = time.perf_counter()
                        fn(prompt, n)
                        tps[name][n].append(n / (time.perf_counter() - t0))
                for name, fn in order:
                    t0 = time.perf_counter()
                    fn(long_prompt, 1)
                    ttft[name].append(time.perf_counter() - t0)
                for name, k in conc_rows.items():
                    for count in (1, sessions):
                        hosters = {h: procs.metrics_urls[h] for h in chain_hosters[k]} if count > 1 else {}
                        before = {h: scrape_metrics(url) for h, url in hosters.items()}
                        secs = run_round(clients[k], fresh(prompt_len, count), session_tokens)
                        conc[name][count].append(count * session_tokens / secs)
                        for h, url in hosters.items():
                            step_paths.setdefault(name, {}).setdefault(h, Counter()).update(
                                _step_path_delta(before[h], scrape_metrics(url)))
            best = max(bandwidths, key=lambda b: b.read)
            results["ceiling"] = ceiling_row(path, best)
            results["bandwidth_all"] = [b.as_dict() for b in bandwidths]
            results["concurrency"] = None if not conc else {
                "sessions": sessions, "new_tokens_per_session": session_tokens,
                "aggregate_tokens_per_s": {c: {str(n): median(v) for n, v in d.items()} for c, d in conc.items()},
                "aggregate_all": {c: {str(n): v for n, v in d.items()} for c, d in conc.items()},
                "step_paths": {c: {h: dict(sorted(d.items())) for h, d in hs.items()} for c, hs in step_paths.items()}}
            results["tokens_per_s"] = {c: {str(n): median(v) for n, v in d.items()} for c, d in tps.items()}
            results["tokens_per_s_all"] = {c: {str(n): v for n, v in d.items()} for c, d in tps.items()}
            results["ttft_s"] = {c: median(v) for c, v in ttft.items()}
            results["ttft_all"] = ttft
    return results


def _step_path_delta(before: dict, after: dict) -> Counter:
    """How a hoster ran the decode steps between two scrapes: rounds by sessions batched ("rounds of N"),
    and steps by compiled graph and outcome ("bucket compiled", "one_session busy", ...)."""
    out: Counter = Counter()
    for (name, labels), v in after.items():
        d = v - before.get((name, labels), 0.0)
        if not d:
            continue
        lab = dict(labels)
        if name == "mesh_hoster_decode_rounds_total":
            out[f"rounds of {int(lab['sessions']):d}"] += int(d)
        elif name == "mesh_hoster_compiled_steps_total":
            out[f"{lab['graph']} {lab['outcome']}"] += int(d)
    return out


def _chain_rows(chains: list[int]) -> dict[str, int]:
    """Row name -> number of hosters, for the default-flag chains."""
    return {f"{k} hoster" + ("s" if k > 1 else ""): k for k in chains}


def is_local(name: str) -> bool:
    return name == "local" or name.startswith("local, ")


def fastest_local(r: dict) -> tuple[dict[str, float], float]:
    """The fastest local row's tokens/s per length (any local row) and the lowest local TTFT."""
    tps = {name: d for name, d in r["tokens_per_s"].items() if is_local(name)}
    lengths = next(iter(tps.values()))
    best = {n: max(d[n] for d in tps.values()) for n in lengths}
    return best, min(t for name, t in r["ttft_s"].items() if is_local(name))


def report(key: str, r: dict) -> str:
    best, best_ttft = fastest_local(r)
    ceil = r["ceiling"]["tokens_per_s"]
    rows = [[CEILING] + [x for _ in best for x in (f"{ceil:.1f}", f"{ceil / best[_]:.2f}x", "1.00x")]
            + ["-", "-", "-"]]
    for name, d in r["tokens_per_s"].items():
        row = [name]
        for n, v in d.items():
            row += [f"{v:.1f}", f"{v / best[n]:.2f}x", f"{v / ceil:.2f}x"]
        t = r["ttft_s"][name]
        row += [f"{t * 1000:.0f}", f"{t / best_ttft:.2f}x", r["tokens_equal_local"][name]]
        rows.append(row)
    headers = ["model " + key]
    for n in best:
        headers += [f"tok/s {r['prompt_len']}->{n}", "vs fastest local", "vs ceiling"]
    headers += [f"TTFT ms ({r['ttft_prompt']} tok)", "vs fastest local", "same tokens"]
    b = r["ceiling"]
    parts = ", ".join(f"{k} {v / 1e6:.1f}" for k, v in b["bytes_per_token"].items())
    lines = [fmt_table(headers, rows),
             f"ceiling: read bandwidth {b['bandwidth']['read_GBps']:.1f} GB/s (sum {b['bandwidth']['sum_GBps']:.1f}, "
             f"mv {b['bandwidth']['mv_GBps']:.1f}, copy {b['bandwidth']['copy_GBps']:.1f}; best of "
             f"{len(r['bandwidth_all'])} passes) / MB read per token ({parts})"]
    if r.get("decode_paths"):
        paths = "; ".join(f"{k}: {', '.join(v)}" for k, v in r["decode_paths"].items())
        lines.append(f"hosters' decode paths: {paths}")
    c = r.get("concurrency")
    if c:
        n = c["sessions"]
        crow = [[name, f"{d['1']:.1f}", f"{d[str(n)]:.1f}", f"{d[str(n)] / d['1']:.2f}x"]
                for name, d in c["aggregate_tokens_per_s"].items()]
        lines.append(fmt_table([f"model {key}, {c['new_tokens_per_session']} tokens/session", "1 session tok/s",
                                f"{n} sessions aggregate tok/s", f"{n} vs 1"], crow))
        for row, hosters in (c.get("step_paths") or {}).items():  # how the hosters ran the N-session rounds
            for h, d in hosters.items():
                lines.append(f"{row}, {n} sessions, {h}: " + ", ".join(f"{k} {v}" for k, v in d.items()))
    return "\n\n".join(lines)


COMPILED = "compiled"  # a chain variant: hosters started with --compile (the client as usual)


def _variant_args(variant: str) -> list[str]:
    """Hoster arguments of a chain variant: a linear kernel's name, or `compiled`."""
    return ["--compile"] if variant == COMPILED else ["--linear-kernel", variant]


def _names(csv: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in csv.split(",") if x.strip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="a,b", help="comma-separated: a, b, quick")
    p.add_argument("--new-tokens", default="64,128")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--ttft-prompt", type=int, default=512)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--chains", default="1,3", help="numbers of hosters in the chain")
    p.add_argument("--no-push-row", action="store_true", help="skip the hop-by-hop (push off) comparison row")
    p.add_argument("--sessions", type=int, default=8, help="concurrent sessions for the 'N vs 1' table (0: skip)")
    p.add_argument("--session-tokens", type=int, default=64, help="new tokens per concurrent session")
    p.add_argument("--local-kernels", default="onednn,blas",
                   help="comma-separated subnet.model.kernels kernels to run local transformers with (also a row each)")
    p.add_argument("--chain-variants", default="",
                   help="comma-separated ways to run the multi-hoster chain again (a row each): a linear "
                        "kernel's name, or compiled (hosters with --compile); none by default (session 4: the "
                        "rows the issue asks for are the default-flag chains)")
    p.add_argument("--no-compiled-lean", action="store_true", help="skip the compiled lean-loop local row")
    p.add_argument("--quick", action="store_true", help="small model, 16 new tokens, one pass")
    p.add_argument("--out", default="generation")
    args = p.parse_args(argv)
    exit_on_sigterm()
    setup_logging("WARNING")  # the client's warnings with their fields (Python's last resort printed bare names)
    if args.quick:
        args.models, args.new_tokens, args.runs, args.ttft_prompt, args.out = "quick", "16", 1, 64, "generation-quick"
        args.session_tokens, args.local_kernels = 8, "onednn"
    start_load = load_avg()
    all_results = {"load_avg_at_start": start_load, "models": {}}
    for key in args.models.split(","):
        r = bench_model(key, new_tokens=[int(x) for x in args.new_tokens.split(",")], prompt_len=args.prompt_len,
                        ttft_prompt=args.ttft_prompt, runs=args.runs, chains=[int(x) for x in args.chains.split(",")],
                        compare_push=not args.no_push_row, local_kernels=_names(args.local_kernels),
                        chain_variants=_names(args.chain_variants), sessions=args.sessions,
                        session_tokens=args.session_tokens, compiled_lean=not args.no_compiled_lean)
        all_results["models"][key] = r
        print(report(key, r), flush=True)
        print(flush=True)
        save_results(args.out, {**all_results, "load_avg_at_end": load_avg()})  # each model as it is done
    all_results["load_avg_at_end"] = load_avg()
    path = save_results(args.out, all_results)
    print(f"load average {start_load} -> {all_results['load_avg_at_end']}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
