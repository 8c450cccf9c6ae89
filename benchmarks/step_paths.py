"""Before/after of the default decode path (hoster/compile_auto.py), in one interleaved run.

    .venv/bin/python -m benchmarks.step_paths --model a

"before": hosters started with `--no-compile` (eager steps, default onednn kernel: the old
default). "after": hosters started with no compile flag (auto: compiled in the background,
served once measured faster; the script waits until each hoster logged its choice). Rows,
each round interleaved over the configurations: one session's greedy generate (tokens/s)
through 1 hoster (all blocks) and through 3 hosters; 1 and 8 concurrent sessions on the
1-hoster setups (aggregate tokens/s); local transformers generate as a reference. Ratios
are within this run; the load average is printed next to them.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

if not __package__:  # also runnable as `python benchmarks/<name>.py`
    import pathlib as _pathlib

    sys.path.insert(0, str(_pathlib.Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

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
    warm_buckets,
)
from benchmarks.concurrency import run_round  # noqa: E402
from hoster.compiled_batch import DEMAND_STEPS  # noqa: E402

CONFIGS = {"before (--no-compile)": ["--no-compile"], "after (default)": []}


def wait_chosen(procs: HosterProcs, timeout: float = 900.0) -> list[str]:
    """Each auto hoster's logged choice (it compiles after `hoster_ready`): the background job's last
    line (`compile_job_done`: the decode path and the batched buckets it serves)."""
    deadline, lines = time.monotonic() + timeout, {}
    while time.monotonic() < deadline and len(lines) < len(procs.procs):
        for p in procs.procs:
            path = procs.log_dir / f"{p.name}.log"
            with contextlib.suppress(OSError):
                done = [ln for ln in path.read_text().splitlines() if "compile_job_done" in ln]
                if done:
                    lines[p.name] = done[-1][-200:]
        time.sleep(1.0)
    if len(lines) < len(procs.procs):
        raise TimeoutError(f"{len(procs.procs) - len(lines)} hosters made no compile choice in {timeout:g}s")
    return list(lines.values())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="a")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sessions", type=int, default=8)
    p.add_argument("--out", default="step-paths")
    args = p.parse_args(argv)
    exit_on_sigterm()
    start_load = load_avg()
    spec = MODELS[args.model]
    path = ensure_model(spec)
    gen = torch.Generator().manual_seed(7)
    prompts = [torch.randint(0, spec.vocab_size, (1, args.prompt_len), generator=gen) for _ in range(args.sessions)]
    setups = {(c, k): f"{spec.name}-{i}-{k}" for i, c in enumerate(CONFIGS) for k in (1, 3)}
    times: dict[str, list[float]] = {}
    chosen: list[str] = []
    with contextlib.ExitStack() as stack:
        procs, models = {}, {}
        for (config, k), name in setups.items():
            hp = stack.enter_context(HosterProcs())
            for a, b in chain_spans(spec.num_layers, k):
                hp.start(path, (a, b), model_name=name, metrics=True, extra=[*CONFIGS[config], "--log-level", "INFO",
                                                                              "--cache-tokens", str(64 * 1024)])
            procs[(config, k)] = hp
        print(f"hosters ready (load {load_avg()}); waiting for the auto hosters' compile choice", flush=True)
        for (config, _k), hp in procs.items():
            if not CONFIGS[config]:
                chosen += wait_chosen(hp)
        for line in chosen:
            print("  ", line, flush=True)
        for (config, k), name in setups.items():
            models[(config, k)] = stack.enter_context(client(path, procs[(config, k)].initial_peers, model_name=name,
                                                             request_timeout=60.0))
        from transformers import AutoModelForCausalLM

        local = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        ids = prompts[0]
        n = args.new_tokens

        def one(m) -> float:
            t0 = time.perf_counter()
            m.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
            return time.perf_counter() - t0

        def local_gen() -> float:
            t0 = time.perf_counter()
            with torch.inference_mode():
                local.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
            return time.perf_counter() - t0

        for m in models.values():  # warm-up (sessions, routes)
            one(m)
        for (config, k), m in models.items():  # the batched buckets these rounds ask for (compiled on demand)
            states = warm_buckets(lambda m=m: run_round(m, prompts, DEMAND_STEPS + 8), procs[(config, k)].metrics_urls)
            print(f"{k} hoster(s), {config}: buckets {states}", flush=True)
        local_gen()
        for r in range(args.rounds):
            times.setdefault("local transformers generate", []).append(n / local_gen())
            for (config, k), m in models.items():
                times.setdefault(f"{k} hoster{'s' if k > 1 else ''}, {config}", []).append(n / one(m))
            for config in CONFIGS:
                m = models[(config, 1)]
                times.setdefault(f"1 hoster, {config}, 1 session (aggregate)", []).append(
                    n / run_round(m, prompts[:1], n))
                times.setdefault(f"1 hoster, {config}, {args.sessions} sessions (aggregate)", []).append(
                    args.sessions * n / run_round(m, prompts, n))
            print(f"round {r + 1}/{args.rounds} done (load {load_avg()})", flush=True)
    rows = [(name, f"{median(v):.1f}", " ".join(f"{x:.1f}" for x in v)) for name, v in times.items()]
    end_load = load_avg()
    print(f"\nmodel {args.model}, {args.prompt_len} -> {n} tokens, load at start {start_load}, at end {end_load}")
    print(fmt_table(["row", "tok/s (median)", "rounds"], rows))
    med = {k: median(v) for k, v in times.items()}
    ratios = {}
    for k in (1, 3):
        s = "s" if k > 1 else ""
        ratios[f"{k} hoster{s}: after/before"] = med[f"{k} hoster{s}, after (default)"] / med[
            f"{k} hoster{s}, before (--no-compile)"]
    for config in CONFIGS:
        many = f"1 hoster, {config}, {args.sessions} sessions (aggregate)"
        single = f"1 hoster, {config}, 1 session (aggregate)"
        ratios[f"{args.sessions} vs 1 sessions, {config}"] = med[many] / med[single]
    for name, v in ratios.items():
        print(f"{name}: {v:.2f}x")
    save_results(args.out, {"load_avg_at_start": start_load, "load_avg_at_end": end_load, "model": spec.__dict__,
                            "new_tokens": n, "rounds": args.rounds, "tokens_per_s": times, "ratios": ratios,
                            "compile_choices": chosen})
    return 0


if __name__ == "__main__":
    sys.exit(main())
