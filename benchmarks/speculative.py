"""Speculative decoding through a 3-hoster chain, on loopback and at a WAN delay.

    .venv/bin/python -m benchmarks.speculative                 # model a, delays 0 and 20 ms
    .venv/bin/python -m benchmarks.speculative --quick         # small model, fewer tokens

Same set-up as `benchmarks/wan.py` (each hoster behind a userspace delay proxy, push forwarding
on). Models here have random weights and no internet means no real model, and a random model
never repeats its prompt (measured: 0 of 96 tokens, so drafts are never accepted). To measure the
mechanism on "editing code the prompt contains", the benchmark serves a *copying stand-in* of the
model: the same checkpoint with every block's output projections (o_proj, down_proj) zeroed, so
the blocks cost exactly what they cost before but the greedy output is a fixed function of the
last token (a walk the client can precompute). The prompt holds that walk with every 12th token
edited (the "file"), then restarts it: the output follows the prompt except at the edits, where
drafts are rejected and the hosters roll back. Acceptance here is a property of this stand-in,
not of a real model editing real code: say so next to any number.

Modes, interleaved run by run (the machine is shared: load drifts):
- `plain`: `speculative=0`, one chain step per token;
- `speculative`: the default (prompt-lookup drafts, adaptive draft length);
- `wrong drafts`: a drafter whose drafts are always wrong, the controller must back off to plain
  steps: the worst case for the loopback slowdown goal (<= 1.1x a plain step).
Decode tokens/s is (n - 1) / (t(n) - t(1)) over whole `generate` calls; round trips are the
client's chain steps (counted per session), so "tokens per round trip" = decode tokens / decode steps.
"""

from __future__ import annotations

import argparse
import sys

if not __package__:  # also runnable as `python benchmarks/<name>.py`
    import pathlib as _pathlib

    sys.path.insert(0, str(_pathlib.Path(__file__).resolve().parent.parent))

import torch  # noqa: E402  (after benchmarks.common set the thread count)

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
)
from benchmarks.wan import start_chain  # noqa: E402
from subnet.swarm.delay_proxy import ProxyThread  # noqa: E402


class WrongDrafts:
    """Drafts that are never what the model says (the controller has to notice and stop drafting)."""

    def __init__(self, vocab: int):
        self.vocab = vocab

    def draft(self, tokens, k):
        return [(tokens[-1] * 7919 + 13 + i) % self.vocab for i in range(k)]


def count_steps(model) -> list[int]:
    """Count the chain steps (one per remote `step` call) of the model's sessions from now on."""
    counter = [0]
    original = model.inference_session

    def counting(*args, **kwargs):
        session = original(*args, **kwargs)
        step = session.step

        def counted(*step_args, **step_kwargs):
            counter[0] += 1
            return step(*step_args, **step_kwargs)

        session.step = counted
        return session

    model.inference_session = counting
    return counter


def copying_stand_in(path, length: int):
    """The checkpoint at `path` with zeroed block output projections (saved once beside it) and the
    greedy walk of `length` tokens it produces from token 1 (next = argmax head(norm(embed(last))))."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    out = Path(f"{path}-copying")
    model = AutoModelForCausalLM.from_pretrained(out if (out / "config.json").exists() else path).eval()
    if not (out / "config.json").exists():
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
        model.save_pretrained(out)
        for f in Path(path).iterdir():  # tokenizer files, if any
            if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
                (out / f.name).write_bytes(f.read_bytes())
    walk = [1]
    with torch.inference_mode():
        for _ in range(length):
            h = model.model.norm(model.model.embed_tokens(torch.tensor([[walk[-1]]])))
            walk.append(int(model.lm_head(h)[0, -1].argmax()))
    return out, torch.tensor(walk)


def run(key: str, delays_ms: list[float], new_tokens: int, block: int, repeats: int, runs: int) -> dict:
    import time

    spec = MODELS[key]
    path, walk = copying_stand_in(ensure_model(spec), block * repeats)
    g = torch.Generator().manual_seed(11)
    edited = walk.clone()
    for i in range(10, len(edited), 12):  # the "edits": drafts copied from here are rejected
        edited[i] = int(torch.randint(0, spec.vocab_size, (1,), generator=g))
    header = torch.randint(0, spec.vocab_size, (16,), generator=g)
    prompt = torch.cat([header, edited, header[-4:], walk[:1]]).view(1, -1)
    proxies = ProxyThread()
    res: dict = {"model": key, "new_tokens": new_tokens, "prompt_len": prompt.shape[1], "runs": runs,
                 "load_avg_at_start": load_avg(), "rows": []}
    outputs: dict[str, list[list[int]]] = {}
    try:
        with start_chain(path, chain_spans(spec.num_layers, 3), proxies) as procs, \
                client(path, procs.initial_peers) as model:
            steps = count_steps(model)
            wrong = WrongDrafts(spec.vocab_size)
            modes = {"plain": (0, None), "speculative": (None, None), "wrong drafts": (None, wrong)}

            def gen(mode: str, n: int) -> tuple[float, int]:
                speculative, drafter = modes[mode]
                model.drafter = drafter
                steps[0] = 0
                t0 = time.perf_counter()
                out = model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                     speculative=speculative)
                dt = time.perf_counter() - t0
                if n > 1:
                    outputs.setdefault(mode, []).append(out[0, prompt.shape[1]:].tolist())
                return dt, steps[0]

            for d in delays_ms:
                proxies.set_delay(d / 1000)
                for mode in modes:
                    gen(mode, new_tokens)  # warm-up
                t = {m: ([], [], []) for m in modes}
                for _ in range(runs):
                    for mode in modes:
                        t[mode][0].append(gen(mode, 1)[0])
                        dt, s = gen(mode, new_tokens)
                        t[mode][1].append(dt)
                        t[mode][2].append(s)
                plain_rate = None
                for mode in modes:
                    step_s = (median(t[mode][1]) - median(t[mode][0])) / (new_tokens - 1)
                    decode_steps = median(t[mode][2]) - 1  # the prompt's step emits the first token
                    rate = 1 / step_s
                    plain_rate = rate if mode == "plain" else plain_rate
                    row = {"delay_ms": d, "mode": mode, "decode_tokens_per_s": rate,
                           "tokens_per_round_trip": (new_tokens - 1) / decode_steps,
                           "speedup_vs_plain": rate / plain_rate, "ms_per_token": step_s * 1000,
                           "load_avg": load_avg()}
                    res["rows"].append(row)
                    print(f"d={d:g} ms {mode:<12} {rate:7.2f} tok/s  {row['tokens_per_round_trip']:.2f} tokens/round "
                          f"trip  x{row['speedup_vs_plain']:.2f} vs plain  (load {row['load_avg']})", flush=True)
    finally:
        proxies.close()
    runs_all = [o for outs in outputs.values() for o in outs]
    res["greedy_identical"] = bool(runs_all) and all(o == runs_all[0] for o in runs_all)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="a", choices=sorted(MODELS))
    p.add_argument("--delays", default="0,20", help="one-way delays in ms, comma separated")
    p.add_argument("--tokens", type=int, default=64, help="new tokens per timed generate")
    p.add_argument("--block", type=int, default=32, help="the prompt's walk has block x repeats tokens")
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="model quick, 32 tokens, 2 runs")
    args = p.parse_args(argv)
    exit_on_sigterm()
    if args.quick:
        args.model, args.tokens, args.runs = "quick", 32, 2
    delays = [float(x) for x in args.delays.split(",") if x.strip()]
    res = run(args.model, delays, args.tokens, args.block, args.repeats, args.runs)
    rows = [[f"{r['delay_ms']:g}", r["mode"], f"{r['decode_tokens_per_s']:.2f}", f"{r['ms_per_token']:.1f}",
             f"{r['tokens_per_round_trip']:.2f}", f"{r['speedup_vs_plain']:.2f}", r["load_avg"]] for r in res["rows"]]
    print()
    print(f"model {res['model']}, 3 hosters, push on, prompt {res['prompt_len']} tokens (copying stand-in), "
          f"{res['new_tokens']} new tokens, load avg at start {res['load_avg_at_start']}")
    print(fmt_table(["one-way delay (ms)", "mode", "decode tok/s", "ms/token", "tokens/round trip",
                     "x plain", "load avg"], rows))
    print(f"greedy tokens identical across modes and delays: {res['greedy_identical']}")
    path = save_results(f"speculative-{res['model']}", res)
    print(f"results: {path}")
    return 0 if res["greedy_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
