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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="a", choices=sorted(MODELS))
    p.add_argument("--sessions", type=int, default=8)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rank", type=int, default=16)
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
    save_results(f"adapters-{spec.name}", {"load_avg_at_start": start_load, "tokens_per_s": tps, "runs_s": times,
                                             "ratio_mixed_vs_base": tps["mixed"] / tps["base"],
                                             "sessions": args.sessions, "tokens": args.tokens, "rank": args.rank})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
