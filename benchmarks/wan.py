"""Generation over a WAN: 3 hosters of model (a) with a one-way delay on every link.

    .venv/bin/python -m benchmarks.wan                      # delays 0, 5, 20, 50 ms (about 5 minutes)
    .venv/bin/python -m benchmarks.wan --quick              # a small model, delays 0 and 20 ms

The kernel here has no netem, so each hoster listens on a loopback port and announces the port of
a userspace delay proxy in front of it (`subnet/swarm/delay_proxy.py`, `--announce-maddrs`): every
connection to a hoster, from the client or from another hoster, crosses that hoster's proxy once,
so every link carries the same one-way delay d in both directions. The client listens on nothing.

A decode step with push forwarding crosses 4 one-way links for 3 hosters (client -> h1 -> h2 -> h3
-> client); hop by hop through the client (push off) it crosses 6. The bound for a mode is
`1 / (local step + links x d)`, with its local step measured at d = 0 through the same proxies,
interleaved run by run with the delayed runs (the machine is shared: load drifts). Decode tokens/s
is (n - 1) / (t(n) - t(1)) over whole `generate` calls (so prefill and session set-up cancel out);
TTFT is the wall time of `generate(max_new_tokens=1)`, session opening included. Medians of
`--runs` runs after one warm-up; greedy tokens are checked identical across every delay and mode.
"""

from __future__ import annotations

import argparse
import dataclasses
import socket
import sys

if not __package__:  # also runnable as `python benchmarks/<name>.py`
    import pathlib as _pathlib

    sys.path.insert(0, str(_pathlib.Path(__file__).resolve().parent.parent))

import torch  # noqa: E402  (after benchmarks.common set the thread count)

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
    timed_runs,
)
from subnet.swarm.delay_proxy import ProxyThread  # noqa: E402

LINKS = {"push": 4, "hop by hop": 6}  # one-way links per decode step, 3 hosters


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_chain(path, spans, proxies: ProxyThread, **start_kw) -> HosterProcs:
    """One hoster per span, each behind its own delay proxy (announced instead of its real port);
    `start_kw` goes to `HosterProcs.start` (e.g. `launcher`, `model_name`)."""
    procs = HosterProcs()
    for span in spans:
        real = free_port()
        proxy = proxies.add(("127.0.0.1", real))
        procs.start(path, span, extra=["--host-maddrs", f"/ip4/127.0.0.1/tcp/{real}",
                                       "--announce-maddrs", f"/ip4/127.0.0.1/tcp/{proxy.port}"], **start_kw)
    return procs


def run(key: str, delays_ms: list[float], new_tokens: int, prompt_len: int, runs: int) -> dict:
    spec = MODELS[key]
    path = ensure_model(spec)
    prompt = torch.randint(0, spec.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(7))
    proxies = ProxyThread()
    results: dict = {"model": key, "new_tokens": new_tokens, "prompt_len": prompt_len, "runs": runs,
                     "load_avg_at_start": load_avg(), "rows": []}
    tokens_seen: list[list[int]] = []
    try:
        with start_chain(path, chain_spans(spec.num_layers, 3), proxies) as procs, \
                client(path, procs.initial_peers) as model:
            push_cfg = model.manager.config
            modes = {"push": push_cfg, "hop by hop": dataclasses.replace(push_cfg, push=False)}

            def gen(cfg, n):
                model.manager.config = cfg
                out = model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                     speculative=0)  # one round trip per token: what the bound is about
                tokens_seen.append(out[0, prompt_len:].tolist())
                return out

            for d in [x for x in delays_ms if x > 0]:
                for mode, cfg in modes.items():
                    # interleaved with the same runs at d = 0, so load changes hit both alike
                    t = {0.0: ([], []), d: ([], [])}
                    gen(cfg, new_tokens)  # warm-up
                    for _ in range(runs):
                        for delay in (0.0, d):
                            proxies.set_delay(delay / 1000)
                            t[delay][0].append(timed_runs(lambda c=cfg: gen(c, 1), 1, warmup=0)[0])
                            t[delay][1].append(timed_runs(lambda c=cfg: gen(c, new_tokens), 1, warmup=0)[0])
                    local = (median(t[0.0][1]) - median(t[0.0][0])) / (new_tokens - 1)
                    t_one, t_all = median(t[d][0]), median(t[d][1])
                    step = (t_all - t_one) / (new_tokens - 1)
                    bound = 1.0 / (local + LINKS[mode] * d / 1000)
                    row = {"delay_ms": d, "mode": mode, "ttft_s": t_one, "step_s": step, "local_step_s": local,
                           "local_ttft_s": median(t[0.0][0]), "decode_tokens_per_s": 1 / step,
                           "bound_tokens_per_s": bound, "ratio_to_bound": (1 / step) / bound,
                           "tokens_per_s_whole": new_tokens / t_all}
                    results["rows"].append(row)
                    print(f"d={d:g} ms {mode:<10} step {step * 1000:7.1f} ms (local {local * 1000:.1f})  "
                          f"decode {1 / step:6.2f} tok/s  bound {bound:6.2f}  ratio {row['ratio_to_bound']:.2f}  "
                          f"TTFT {t_one * 1000:.0f} ms (local {row['local_ttft_s'] * 1000:.0f})", flush=True)
            full = [t for t in tokens_seen if len(t) == new_tokens]
            results["greedy_identical"] = all(t == full[0] for t in full) and all(
                t == full[0][:1] for t in tokens_seen if len(t) == 1)
    finally:
        proxies.close()
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="a", choices=sorted(MODELS))
    p.add_argument("--delays", default="5,20,50", help="one-way delays in ms, comma separated (each paired with 0)")
    p.add_argument("--tokens", type=int, default=24, help="new tokens per timed generate")
    p.add_argument("--prompt", type=int, default=16, help="prompt length")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="model quick, delays 20, 12 tokens, 2 runs")
    args = p.parse_args(argv)
    exit_on_sigterm()
    if args.quick:
        args.model, args.delays, args.tokens, args.runs = "quick", "20", 12, 2
    delays = [float(x) for x in args.delays.split(",") if x.strip()]
    res = run(args.model, delays, args.tokens, args.prompt, args.runs)
    rows = [[f"{r['delay_ms']:g}", r["mode"], f"{r['ttft_s'] * 1000:.0f} ({r['local_ttft_s'] * 1000:.0f})",
             f"{r['step_s'] * 1000:.1f} ({r['local_step_s'] * 1000:.1f})", f"{r['decode_tokens_per_s']:.2f}",
             f"{r['bound_tokens_per_s']:.2f}", f"{r['ratio_to_bound']:.2f}"] for r in res["rows"]]
    print()
    print(f"model {res['model']}, 3 hosters, {res['new_tokens']} new tokens, "
          f"load avg at start {res['load_avg_at_start']}")
    print(fmt_table(["one-way delay (ms)", "mode", "TTFT ms (at 0 ms)", "step ms (at 0 ms)", "decode tok/s",
                     "bound tok/s", "ratio to bound"], rows))
    print(f"greedy tokens identical across delays and modes: {res['greedy_identical']}")
    path = save_results(f"wan-{res['model']}", res)
    print(f"results: {path}")
    return 0 if res["greedy_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
