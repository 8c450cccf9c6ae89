"""`n=4` in one request (one batched session) vs 4 separate requests, through the HTTP API on a swarm.

    .venv/bin/python -m benchmarks.api_n_batch           # model a, 32 new tokens per choice
    .venv/bin/python -m benchmarks.api_n_batch --quick   # small model, 16 new tokens

Two hoster processes serve half the blocks each; this process runs the API (SwarmBackend)
and the official openai client. Every choice generates exactly `--tokens` tokens (EOS is
banned with logit_bias), so the rounds do the same work. Throughput = completion tokens /
wall time of the round:
- "n=4, one request": the choices decode as one batched remote session (subnet/api/batching.py);
- "4 requests, one after another": what `n=4` cost before batching (choices ran in turn);
- "4 requests at once": 4 concurrent sessions (the hosters batch concurrent steps themselves).
`n=4` prefills the prompt (`--prompt-tokens` long) once: its first step sends one row and the
hosters copy its KV into the four rows (hoster.prefix_cache). The separate requests run with
the client's prefix reuse off (each prefills the whole prompt, as 4 independent users would);
"... prefix reuse on" lets requests 2-4 fork the first one's prompt instead. The machine is
shared: the load average is printed and saved with the numbers.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor

if not __package__:  # also runnable as `python benchmarks/<name>.py`
    import pathlib as _pathlib

    sys.path.insert(0, str(_pathlib.Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    MODELS,
    HosterProcs,
    chain_spans,
    ensure_model,
    exit_on_sigterm,
    fmt_table,
    load_avg,
    median,
    save_results,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tokens", type=int, default=None)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=256)
    args = ap.parse_args()
    exit_on_sigterm()
    spec = MODELS["quick" if args.quick else "a"]
    tokens = args.tokens or (16 if args.quick else 32)
    start_load = load_avg()
    path = ensure_model(spec)

    import openai

    from subnet.api import create_app
    from subnet.api.server import BackgroundServer
    from subnet.api.swarm_backend import SwarmBackend

    with HosterProcs() as hosters:
        for span in chain_spans(spec.num_layers, 2):
            hosters.start(path, span, model_name=spec.name)
        backend = SwarmBackend.from_pretrained(str(path), hosters.initial_peers, model_name=spec.name)
        try:
            backend._models[spec.name].wait_until_servable(60)
            tok = backend.tokenizer(spec.name)
            eos = tok.eos_token_id
            words = "Validators post probes and hosters reveal their outputs.".split()
            prompt = " ".join(words[i % len(words)] for i in range(args.prompt_tokens))
            while len(tok.encode(prompt)) > args.prompt_tokens:
                prompt = prompt.rsplit(" ", 1)[0]
            model = backend._models[spec.name]
            store = model.manager.prefix_store
            with BackgroundServer(create_app(backend, max_tokens_limit=4096)) as server:
                client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=600)
                kw = dict(model=spec.name, prompt=prompt, max_tokens=tokens, temperature=1.0,
                          logit_bias={str(eos): -100})

                def one_request() -> int:
                    return client.completions.create(n=4, seed=1, **kw).usage.completion_tokens

                def sequential() -> int:
                    return sum(client.completions.create(seed=1 + i, **kw).usage.completion_tokens for i in range(4))

                def concurrent() -> int:
                    with ThreadPoolExecutor(4) as pool:
                        return sum(pool.map(lambda i: client.completions.create(seed=1 + i, **kw)
                                            .usage.completion_tokens, range(4)))

                rows, results = [], {}
                for name, fn in [("n=4, one request", one_request), ("4 requests, one after another", sequential),
                                 ("4 requests at once", concurrent),
                                 ("4 requests, one after another, prefix reuse on", sequential)]:
                    model.manager.prefix_store = store if name.endswith("reuse on") else None
                    fn()  # warm-up
                    rates = []
                    for _ in range(args.runs):
                        t0 = time.perf_counter()
                        n_tokens = fn()
                        rates.append(n_tokens / (time.perf_counter() - t0))
                    results[name] = median(rates)
                base = results["n=4, one request"]
                for name, rate in results.items():
                    rows.append([name, f"{rate:.1f}", f"{base / rate:.2f}x"])
        finally:
            model.manager.prefix_store = store
            backend.close()
    print(f"model {spec.name}, 2 hosters, {len(tok.encode(prompt))}-token prompt, {tokens} tokens per choice, "
          f"median of {args.runs}; "
          f"load average at start {start_load}, at end {load_avg()} (2 cores shared with other work)")
    print(fmt_table(["variant", "tokens/s", "n=4 batch speed-up"], rows))
    save_results("api_n_batch" + ("_quick" if args.quick else ""),
                 {"load_avg_at_start": start_load, "model": spec.name, "tokens": tokens, "tokens_per_s": results,
                  "speedup_vs_sequential": base / results["4 requests, one after another"],
                  "speedup_vs_concurrent": base / results["4 requests at once"]})


if __name__ == "__main__":
    main()
