"""LoRA adapters: aggregate tokens/s of 8 concurrent sessions with 2 adapters mixed vs none, in one run.

    .venv/bin/python -m benchmarks.adapters             # model a, 8 sessions x 32 new tokens
    .venv/bin/python -m benchmarks.adapters --model quick --tokens 8

Two hoster processes serve every block of the same checkpoint: `plain` (no --adapters) and
`lora` (--adapters with two rank-16 adapters on q/k/v/o/gate/up/down). One client process runs
8 greedy generations at once (one thread each) per round; rounds alternate between
  - base:  8 sessions without adapter on the plain hoster (the goal's reference),
  - same:  8 sessions without adapter on the lora hoster (cost of the wrapped layers alone),
  - mixed: 4 sessions with adapter 1 + 4 with adapter 2 on the lora hoster (one batch per step),
and the median round of each gives aggregate tokens/s. Goal: mixed / base >= 0.8.
Then the hoster's compute alone, in this process: seconds per batched decode step of the same
sessions without adapters vs with the two mixed (alternating steps; no network, no client).
End-to-end: the client's per-token work (embedding, LM head) shares the two cores with the hoster.
The machine is shared with other jobs: the load average is printed and saved with the numbers.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time

if not __package__:  # also runnable as `python benchmarks/<name>.py`
    import pathlib as _pathlib

    sys.path.insert(0, str(_pathlib.Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import (  # noqa: E402
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

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(path, out_dir: str, seed: int, r: int) -> str:
    """A random LoRA adapter in the PEFT format (peft's own save_pretrained), non-zero B."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS, init_lora_weights=False))
    model.save_pretrained(out_dir)
    return out_dir


def run_round(model, prompts: list[torch.Tensor], adapters: list[str | None], tokens: int) -> float:
    """Wall seconds for len(prompts) concurrent greedy generations (session i uses adapters[i])."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(prompts) + 1)

    def work(ids, adapter):
        try:
            barrier.wait()
            model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, adapter=adapter)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(p, a)) for p, a in zip(prompts, adapters)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


def hoster_compute(path, a1: str, a2: str, sessions: int, steps: int, prompt: int = 16) -> dict[str, float]:
    """Seconds per batched decode step of `sessions` sessions in one process (the hoster's compute only):
    no adapters vs two adapters mixed, alternating blocks of steps on the same loaded span."""
    import concurrent.futures

    from hoster.adapters import load_span_adapters
    from hoster.backend import Backend, _Task
    from subnet.model.blocks import load_blocks, load_config

    n = load_config(path).num_hidden_layers
    span = load_blocks(path, 0, n, progress=False)
    load_span_adapters(span, [a1, a2], str(path))
    backend = Backend(span, None)
    gen = torch.Generator().manual_seed(1)
    half = sessions // 2
    setups = {"base": [None] * sessions, "mixed": ["bench-lora-1"] * half + ["bench-lora-2"] * (sessions - half)}
    groups, times = {}, {k: [] for k in setups}
    try:
        for name, adapters in setups.items():
            group = []
            for adapter in adapters:
                s = backend.open_session(0, n, 1, prompt + steps + 8)
                s.adapter = adapter
                h = torch.randn(1, prompt, span.hidden_size, generator=gen)
                backend._step_one(_Task(concurrent.futures.Future(), h, 0, n, s, 0))
                group.append(s)
            groups[name] = group
        x = torch.randn(1, 1, span.hidden_size, generator=gen)
        for i in range(steps):
            for name, group in groups.items():
                batch = [_Task(concurrent.futures.Future(), x, 0, n, s, s.length) for s in group]
                t0 = time.perf_counter()
                backend._step_batched(batch)
                if i >= 2:  # warm-up
                    times[name].append(time.perf_counter() - t0)
    finally:
        backend.shutdown()
    return {k: median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="a", choices=sorted(MODELS))
    p.add_argument("--sessions", type=int, default=8)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--steps", type=int, default=40, help="in-process batched decode steps per setup")
    p.add_argument("--compute-only", action="store_true", help="only the in-process hoster compute part")
    args = p.parse_args(argv)
    exit_on_sigterm()
    start_load = load_avg()
    spec = MODELS[args.model]
    path = ensure_model(spec)
    tmp = tempfile.mkdtemp(prefix="mesh-bench-adapters-")
    a1 = make_adapter(path, f"{tmp}/bench-lora-1", 1, args.rank)
    a2 = make_adapter(path, f"{tmp}/bench-lora-2", 2, args.rank)
    n = spec.num_layers
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, spec.vocab_size, (1, 16), generator=gen) for _ in range(args.sessions)]
    half = args.sessions // 2
    setups = {"base": ("plain", [None] * args.sessions), "same": ("lora", [None] * args.sessions),
              "mixed": ("lora", ["bench-lora-1"] * half + ["bench-lora-2"] * (args.sessions - half))}
    times: dict[str, list[float]] = {k: [] for k in setups}
    if args.compute_only:
        step = hoster_compute(path, a1, a2, args.sessions, args.steps)
        print(f"hoster compute only: no adapters {1000 * step['base']:.1f} ms/step, mixed {1000 * step['mixed']:.1f} "
              f"ms/step; mixed / none throughput {step['base'] / step['mixed']:.3f}; load avg {load_avg()}")
        return 0
    with HosterProcs() as procs:
        procs.start(path, (0, n), model_name=f"{spec.name}-plain")
        procs.start(path, (0, n), model_name=f"{spec.name}-lora", extra=["--adapters", f"{a1},{a2}"])
        with client(path, procs.initial_peers, model_name=f"{spec.name}-plain") as plain, \
                client(path, procs.initial_peers, model_name=f"{spec.name}-lora") as lora:
            models = {"plain": plain, "lora": lora}
            for which, adapters in setups.values():  # warm-up round of each (untimed)
                run_round(models[which], prompts, adapters, 4)
            for r in range(args.rounds):  # alternating rounds: load drift hits every setup alike
                for name, (which, adapters) in setups.items():
                    times[name].append(run_round(models[which], prompts, adapters, args.tokens))
                    print(f"round {r} {name}: {times[name][-1]:.2f} s", flush=True)
    total = args.sessions * args.tokens
    tps = {k: total / median(v) for k, v in times.items()}
    rows = [[k, f"{tps[k]:.1f}", f"{tps[k] / tps['base']:.3f}"] for k in setups]
    print(f"\nmodel {spec.name}, {args.sessions} concurrent sessions x {args.tokens} greedy tokens, adapters rank "
          f"{args.rank} on all 7 projections; load avg at start {start_load}, at end {load_avg()} "
          f"(2 vCPUs shared with other jobs)")
    print(fmt_table(["sessions", "tokens/s (aggregate)", "x base"], rows))
    print(f"\nmixed adapters / no adapters: {tps['mixed'] / tps['base']:.3f} (goal >= 0.8)")
    step = hoster_compute(path, a1, a2, args.sessions, args.steps)
    print(f"\nhoster compute only (in process, {args.sessions} sessions per batched decode step, median of "
          f"{args.steps - 2} alternating steps): no adapters {1000 * step['base']:.1f} ms, 2 adapters mixed "
          f"{1000 * step['mixed']:.1f} ms; step throughput mixed / none: {step['base'] / step['mixed']:.3f}")
    save_results(f"adapters-{spec.name}", {"load_avg_at_start": start_load, "tokens_per_s": tps, "runs_s": times,
                                             "hoster_step_s": step,
                                             "ratio_mixed_vs_base": tps["mixed"] / tps["base"],
                                             "sessions": args.sessions, "tokens": args.tokens, "rank": args.rank})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
