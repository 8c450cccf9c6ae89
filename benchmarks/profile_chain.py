"""Where a decode step's time goes in a chain of hosters (a profiling aid, not a goal check).

    .venv/bin/python -m benchmarks.profile_chain --model a --hosters 3

Times, per generated token: the whole generate with hoster-to-hoster push (the default),
then hop by hop (push off) with each hop's round trip
(`InferenceStream.step`, serialization included), and the pure compute of that hop's blocks
measured in this process with the same `BlockSpan` code; the difference is the per-hop
transport + queueing overhead. Optionally writes cProfile stats of the client.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import defaultdict

if not __package__:  # also runnable as `python benchmarks/<name>.py`
    import pathlib as _pathlib

    sys.path.insert(0, str(_pathlib.Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import MODELS, HosterProcs, chain_spans, client, ensure_model, exit_on_sigterm, median


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="a")
    p.add_argument("--hosters", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--cprofile", default=None, help="write client cProfile stats here")
    args = p.parse_args(argv)
    exit_on_sigterm()
    spec = MODELS[args.model]
    path = ensure_model(spec)
    spans = chain_spans(spec.num_layers, args.hosters)

    from subnet.client import transport
    from subnet.model.blocks import load_blocks

    # pure compute of each hop's blocks, one decode position after a 16-token prefix
    compute, prefill = {}, {}
    for a, b in spans:
        span = load_blocks(path, a, b, progress=False)
        cache = span.new_cache()
        span(torch.randn(1, 16, spec.hidden_size), cache=cache)
        ts = []
        for _ in range(40):
            t0 = time.perf_counter()
            span(torch.randn(1, 1, spec.hidden_size), cache=cache)
            ts.append(time.perf_counter() - t0)
        compute[(a, b)] = median(ts[5:])
        ts = []
        for _ in range(3):
            x = torch.randn(1, args.prompt_len, spec.hidden_size)
            t0 = time.perf_counter()
            span(x, cache=span.new_cache())
            ts.append(time.perf_counter() - t0)
        prefill[(a, b)] = min(ts)
        del span, cache

    hop_times: dict[tuple[int, int], list[float]] = defaultdict(list)
    orig = transport.InferenceStream.step

    async def timed_step(self, hidden, position, timeout):
        t0 = time.perf_counter()
        try:
            return await orig(self, hidden, position, timeout)
        finally:
            key = (self.start, self.end) if hidden.shape[1] == 1 else (self.start, self.end, "prefill")
            hop_times[key].append(time.perf_counter() - t0)

    transport.InferenceStream.step = timed_step
    prompt = torch.randint(0, spec.vocab_size, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
    with HosterProcs() as procs:
        for i, s in enumerate(spans):
            procs.start(path, s, model_name=f"{spec.name}-prof", wait=i == 0)
        for pr in procs.procs:
            procs.wait(pr)
        with client(path, procs.initial_peers, f"{spec.name}-prof") as m:
            pushing = m.manager.config
            m.generate(prompt, max_new_tokens=8, min_new_tokens=8)
            t0 = time.perf_counter()
            m.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
            pushed = time.perf_counter() - t0
            m.manager.config = dataclasses.replace(pushing, push=False)  # hop by hop: each hop timed alone
            m.generate(prompt, max_new_tokens=8, min_new_tokens=8)
            hop_times.clear()
            prof = None
            if args.cprofile:
                import cProfile

                prof = cProfile.Profile()
                prof.enable()
            t0 = time.perf_counter()
            m.generate(prompt, max_new_tokens=1, min_new_tokens=1)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            m.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
            total = time.perf_counter() - t0
            if prof is not None:
                prof.disable()
                prof.dump_stats(args.cprofile)
    per_token = total / args.new_tokens * 1000
    print(f"model {args.model}, {args.hosters} hosters: {pushed / args.new_tokens * 1000:.1f} ms per token with "
          f"hoster-to-hoster push, {per_token:.1f} ms hop by hop (whole generate / new tokens)")
    print("hop by hop:")
    print(f"time to first token ({args.prompt_len}-token prompt): {first * 1000:.0f} ms")
    for s in spans:
        rt = min(hop_times[(*s, "prefill")]) * 1000
        print(f"  prefill hop {s[0]}:{s[1]}: round trip {rt:.1f} ms, compute {prefill[s] * 1000:.1f} ms")
    rpc_sum = 0.0
    for s in spans:
        rt = median(hop_times[s]) * 1000
        c = compute[s] * 1000
        rpc_sum += rt
        print(f"  hop {s[0]}:{s[1]}: round trip {rt:.2f} ms, compute {c:.2f} ms, overhead {rt - c:.2f} ms")
    print(f"  hops total {rpc_sum:.1f} ms; client-side rest (embed, norm+lm head, sampling, python) "
          f"{per_token - rpc_sum:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
