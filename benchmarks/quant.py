"""Quantized hosters (`--quant int8|nf4`) vs float32: memory, speed and output error, in one run.

Per mode, on one model (default b: 12 Llama layers, hidden 1024):

- weight bytes of all 12 blocks as loaded (`BlockSpan.weight_bytes()`, quantized tensors at their
  real size) and the ratio to float32;
- RSS of the hoster processes of a 3-hoster chain, idle after loading (sum of the three main
  processes' VmRSS) and the ratio to the float32 chain's;
- greedy tokens/s of one session through that chain (real processes on 127.0.0.1);
- relative L2 error of the last position's logits vs float32 (client parts + all blocks in this
  process: the code the hosters run, bit-identical to them, see tests/subnet/client/test_quant_swarm.py);
- the issue's "hoster RSS vs float32" net of the runtime: RSS held after loading every block and the
  peak while loading, minus the process's RSS before, from safetensors and from an F32 GGUF file,
  over the float32 weights' bytes (benchmarks/quant_load.py: one fresh process per row).

    python -m benchmarks.quant [--model b|a|quick] [--tokens 16] [--modes none,int8,nf4]
                               [--load-sources safetensors,gguf]

The machine is shared with other jobs: the load average is printed and saved with the numbers.
"""

from __future__ import annotations

import argparse

from benchmarks.common import (
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


def _rss_mb(pid: int) -> float:
    from pathlib import Path

    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def local_logits(path, mode: str, ids):
    import torch

    from subnet.model.blocks import load_blocks, load_client_parts, load_config

    n = load_config(path).num_hidden_layers
    parts = load_client_parts(path, linear_kernel="torch")
    span = load_blocks(path, 0, n, progress=False, quant=mode, linear_kernel="torch")
    with torch.inference_mode():
        logits = parts.lm_head(parts.norm(span(parts.embed_tokens(ids))))[:, -1].float()
    return logits, span.weight_bytes()


def measure(path, spec, mode: str, tokens: int, runs: int, ids) -> dict:
    name = f"{spec.name}-q{mode}"
    with HosterProcs() as procs:
        spans = chain_spans(spec.num_layers, 3)
        started = [procs.start(path, spans[0], model_name=name, extra=["--quant", mode])]  # bootstraps the DHT
        started += [procs.start(path, span, model_name=name, extra=["--quant", mode], wait=False) for span in spans[1:]]
        for p in started[1:]:
            p.wait_ready(300)
        rss = sum(_rss_mb(p.proc.pid) for p in started)
        try:
            with client(path, procs.initial_peers, model_name=name, request_timeout=120.0) as model:  # loaded machine
                times = timed_runs(lambda: model.generate(ids, max_new_tokens=tokens), runs)
        except Exception as e:  # e.g. a route lost on an overloaded machine: keep the other columns
            print(f"{mode}: chain failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
            return {"mode": mode, "hoster_rss_mb": rss, "tokens_per_s": float("nan"), "runs_s": [],
                    "error": str(e)[:200]}
    return {"mode": mode, "hoster_rss_mb": rss, "tokens_per_s": tokens / median(times), "runs_s": times}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="b", choices=sorted(MODELS))
    p.add_argument("--modes", default="none,int8,nf4")
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--load-sources", default="safetensors,gguf", help="load-RSS rows per source ('' to skip)")
    args = p.parse_args(argv)
    exit_on_sigterm()
    import torch

    start_load = load_avg()
    spec = MODELS[args.model]
    path = ensure_model(spec)
    ids = torch.randint(0, 4000, (1, 24), generator=torch.Generator().manual_seed(0))
    ref_logits, ref_bytes = local_logits(path, "none", ids)
    results = []
    for mode in [m for m in args.modes.split(",") if m]:
        logits, weight_bytes = (ref_logits, ref_bytes) if mode == "none" else local_logits(path, mode, ids)
        r = measure(path, spec, mode, args.tokens, args.runs, ids)
        r["weights_mb"] = weight_bytes / 2**20
        r["logits_rel_error"] = float((logits - ref_logits).norm() / ref_logits.norm())
        r["top1_agrees"] = bool(logits.argmax() == ref_logits.argmax())
        results.append(r)
        print(f"{mode}: {r}", flush=True)
    base = next((r for r in results if r["mode"] == "none"), results[0])
    rows = [[r["mode"], f"{r['weights_mb']:.1f}", f"{r['weights_mb'] / base['weights_mb']:.3f}",
             f"{r['hoster_rss_mb']:.0f}", f"{r['hoster_rss_mb'] / base['hoster_rss_mb']:.3f}",
             f"{r['tokens_per_s']:.2f}", f"{r['tokens_per_s'] / base['tokens_per_s']:.3f}",
             f"{r['logits_rel_error']:.4f}"] for r in results]
    print(f"\nmodel {spec.name}, 3-hoster chain, {args.tokens} greedy tokens, load avg at start {start_load}, "
          f"at end {load_avg()} (2 vCPUs shared with other jobs)")
    print(fmt_table(["quant", "weights MB", "x f32", "hoster RSS MB (3 procs)", "x f32", "tokens/s", "x f32",
                     "logits rel. error"], rows))
    load_rows, load_results = [], []
    sources = [x for x in args.load_sources.split(",") if x]
    if sources:
        from benchmarks import quant_load  # deferred: only with load rows

        load_rows, load_results = quant_load.table(spec, [m for m in args.modes.split(",") if m], sources)
        print(fmt_table(quant_load.HEADERS, load_rows))
    print(f"load avg at end {load_avg()}")
    save_results(f"quant-{spec.name}", {"load_avg_at_start": start_load, "results": results,
                                        "load_rss": load_results, "load_avg_at_end": load_avg()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
