"""Where each millisecond of a decode step goes in a chain of hosters: network, Python, compute.

    .venv/bin/python -m benchmarks.profile_chain --model a --hosters 3
    .venv/bin/python -m benchmarks.profile_chain --quick

Real hosters (`python -m benchmarks.traced_hoster`: `python -m hoster` with its step path's
methods wrapped to record timestamps, `benchmarks/chain_trace.py`) and the real client with
default flags (hoster-to-hoster push); greedy `generate` of `--new-tokens` after a
`--prompt-len` prompt. Only decode steps count: the window starts when the first token's
logits are ready (the prefill is before it), so per token = window / (new tokens - 1).

Each pass is two `generate` calls: a timed one (wall clocks only: a few perf_counter calls per
step) and a profiled one (the same, plus `torch.profiler` around every hoster span forward and
the client's head and embedding calls). Walls come from the timed call; the profiled call gives
each part's op share (torch op time / the call's wall, both inside the same profiled call), which
splits the timed wall into ops and Python. The profiler's own cost per op (microseconds) falls
partly inside and partly outside the op intervals, so the split is approximate. Per token:

  compute   client ops       torch ops of the client's embedding, final norm and LM head (profiled)
            hoster ops       torch ops inside each hoster's span forward (profiled)
  Python    client rest      the client's wall minus its waits for hosters, its ops and its encodes:
                             the generate loop, sampling, the hand-off to its event loop thread
            head/embed glue  the client's head and embedding calls minus their ops
            hoster blocks    each hoster's span forward wall minus its ops (module calls, masks, cache
                             bookkeeping between the ops)
            hoster step      `Backend.step` minus the span: hand-off event loop -> compute thread ->
                             event loop, queueing, KV reserve (thread wake-ups, not only Python)
            receipts         hashing and signing each step's receipt
  network   serialisation    every `subnet.swarm.wire` tensor encode/decode, client and hosters
            push send        writing the output to the next hoster's stream (minus its encode)
            transport        the rest of the client's wait: libp2p/p2pd streams over loopback, event
                             loop scheduling and the RPC handlers' own Python between the timed calls
                             (by subtraction: the one part not timed directly)

The parts add up to the measured per-token time by construction (transport is the remainder);
the printed values are medians over passes part by part, so their sum differs a little from the
median total.
Next to it, in the same passes, the lean local loop (`benchmarks/lean_local.py`: the same block
code over all layers and the same client head in this one process, no network), timed and
profiled the same way: its blocks' wall and op share, its head, its rest. The difference
between the two, part by part, is what the chain adds per token.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

if not __package__:  # also runnable as `python benchmarks/<name>.py`
    import pathlib as _pathlib

    sys.path.insert(0, str(_pathlib.Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.chain_trace import TRACE_ENV, install_client, take_records, timed  # noqa: E402
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
)
from benchmarks.lean_local import LeanLocal  # noqa: E402

Records = list[tuple[str, float, float]]


def collect(trace: Path, pids: list[int], tag: str, timeout: float = 60.0) -> dict[int, Records]:
    """Ask every traced hoster for its records (`dump-<tag>`) and read them."""
    (trace / f"dump-{tag}").touch()
    out, t_end = {}, time.monotonic() + timeout
    while len(out) < len(pids) and time.monotonic() < t_end:
        for pid in pids:
            f = trace / f"{pid}-dump-{tag}.json"
            if pid not in out and f.exists():
                import json

                out[pid] = [tuple(r) for r in json.loads(f.read_text())]
        time.sleep(0.1)
    if len(out) < len(pids):
        raise RuntimeError(f"no trace from hosters {set(pids) - set(out)}")
    return out


def _sum(records: Records, name: str, t0: float) -> float:
    return sum(b - a for n, a, b in records if n == name and a >= t0)


def _nested(records: Records, outer: str, inner: str, t0: float) -> float:
    """Time of `inner` calls that ran inside `outer` calls (same process)."""
    outs = [(a, b) for n, a, b in records if n == outer and a >= t0]
    return sum(b - a for n, a, b in records if n == inner and a >= t0
               and any(oa <= a and b <= ob for oa, ob in outs))


def one_pass(m, trace: Path, pids: list[int], prompt: torch.Tensor, n: int, tag: str) -> dict:
    """One generate; per-token seconds of every recorded part after the first token's logits."""
    take_records()
    t0 = time.perf_counter()
    m.generate(prompt, max_new_tokens=n, min_new_tokens=n)
    t_end = time.perf_counter()
    mine = take_records()
    start = min(b for name, a, b in mine if name == "head" and a >= t0)  # first token's logits ready
    hosters = collect(trace, pids, tag)
    tokens = n - 1
    r = {"per_token": (t_end - start) / tokens, "whole_generate_per_token": (t_end - t0) / n}
    for name in ("wait", "head", "embed", "head_ops", "embed_ops", "head_inner", "embed_inner", "encode", "decode"):
        r[f"client_{name}"] = _sum(mine, name, start) / tokens
    r["client_decode_in_wait"] = _nested(mine, "wait", "decode", start) / tokens
    r["hosters"] = {}
    for pid, recs in hosters.items():
        h = {name: _sum(recs, name, start) / tokens
             for name in ("step", "span", "span_ops", "span_inner", "receipt", "push", "encode", "decode")}
        h["encode_in_push"] = _nested(recs, "push", "encode", start) / tokens
        h["steps"] = sum(1 for name, a, _ in recs if name == "step" and a >= start)
        r["hosters"][str(pid)] = h
    return r


def lean_pass(lean: LeanLocal, prompt: torch.Tensor, n: int) -> dict:
    """The lean local loop's generate, split like `one_pass` (its blocks are `lean_step` records)."""
    take_records()
    t0 = time.perf_counter()
    lean.generate(prompt, n)
    t_end = time.perf_counter()
    mine = take_records()
    start = min(b for name, a, b in mine if name == "head" and a >= t0)
    tokens = n - 1
    r = {"per_token": (t_end - start) / tokens}
    for name in ("lean_step", "lean_step_ops", "lean_step_inner", "head", "embed", "head_ops", "head_inner"):
        r[name] = _sum(mine, name, start) / tokens
    return r


def lean_breakdown(timed: dict, profiled: dict) -> dict[str, float]:
    """Per-token ms of the lean loop by part: blocks ops / Python, head+embed, the loop's rest."""
    blocks_ops = timed["lean_step"] * _share(profiled["lean_step_ops"], profiled["lean_step_inner"])
    head = timed["head"] + timed["embed"]
    head_ops = head * _share(profiled["head_ops"], profiled["head_inner"])
    parts = {"compute: ops (embed, norm, LM head)": head_ops, "compute: ops (blocks)": blocks_ops,
             "Python: head/embed glue": head - head_ops, "Python: blocks outside ops": timed["lean_step"] - blocks_ops,
             "Python: loop rest (argmax, KV reserve)": timed["per_token"] - timed["lean_step"] - head}
    return {k: v * 1000 for k, v in parts.items()}


def _share(ops: float, inner: float) -> float:
    return min(1.0, ops / inner) if inner > 0 else 0.0


def breakdown(timed: dict, profiled: dict) -> dict[str, float]:
    """Per-token ms by part (see the module docstring).

    Walls come from the timed pass; the op share of a call (ops / its wall, both inside the same
    profiled call of the profiled pass) splits the timed wall into ops and Python.
    """
    T, hs, hp = timed["per_token"], timed["hosters"], profiled["hosters"]
    client_calls = timed["client_head"] + timed["client_embed"]
    client_ops = client_calls * _share(profiled["client_head_ops"] + profiled["client_embed_ops"],
                                       profiled["client_head_inner"] + profiled["client_embed_inner"])
    hoster_ops = sum(hs[p]["span"] * _share(hp[p]["span_ops"], hp[p]["span_inner"]) for p in hs)
    parts = {
        "compute: client ops (embed, norm, LM head)": client_ops,
        "compute: hoster ops (blocks)": hoster_ops,
        "Python: client rest (loop, sampling, thread hand-off)":
            T - timed["client_wait"] - client_calls - timed["client_encode"],
        "Python: client head/embed glue": client_calls - client_ops,
        "Python: hoster blocks outside ops": sum(hs[p]["span"] for p in hs) - hoster_ops,
        "Python+threads: hoster step outside blocks (hand-off, queue, KV)":
            sum(hs[p]["step"] - hs[p]["span"] for p in hs),
        "Python: hoster receipts": sum(hs[p]["receipt"] for p in hs),
        "network: serialisation (all encode/decode)":
            timed["client_encode"] + timed["client_decode"] + sum(hs[p]["encode"] + hs[p]["decode"] for p in hs),
        "network: push send (minus its encode)": sum(hs[p]["push"] - hs[p]["encode_in_push"] for p in hs),
    }
    in_wait = timed["client_decode_in_wait"] + sum(
        hs[p]["step"] + hs[p]["receipt"] + hs[p]["push"] + hs[p]["encode"] - hs[p]["encode_in_push"] + hs[p]["decode"]
        for p in hs)
    parts["network: transport (remainder of the client's wait)"] = timed["client_wait"] - in_wait
    return {k: v * 1000 for k, v in parts.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="a")
    p.add_argument("--hosters", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--runs", type=int, default=3, help="passes (each a timed and a profiled generate)")
    p.add_argument("--quick", action="store_true", help="small model, 16 new tokens, one pass")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    exit_on_sigterm()
    if args.quick:
        args.model, args.new_tokens, args.runs = "quick", 16, 1
    out_name = args.out or f"profile_chain-{args.model}-{args.hosters}h"
    start_load = load_avg()
    spec = MODELS[args.model]
    path = ensure_model(spec)
    spans = chain_spans(spec.num_layers, args.hosters)
    lean = LeanLocal(path)
    lean.step = timed("lean_step", lean.step, ops=True)  # its blocks, timed like a hoster's span

    trace = Path(tempfile.mkdtemp(prefix="mesh-chain-trace-"))
    os.environ[TRACE_ENV] = str(trace)  # the hosters inherit it
    install_client()
    prompt = torch.randint(0, spec.vocab_size, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
    passes: list[tuple[dict, dict]] = []
    lean_passes: list[tuple[dict, dict]] = []
    with HosterProcs() as procs:
        for i, s in enumerate(spans):
            procs.start(path, s, model_name=f"{spec.name}-prof", wait=i == 0, launcher="benchmarks.traced_hoster")
        for pr in procs.procs:
            procs.wait(pr)
        pids = [pr.proc.pid for pr in procs.procs]
        with client(path, procs.initial_peers, f"{spec.name}-prof") as m:
            m.generate(prompt, max_new_tokens=8, min_new_tokens=8)  # warm-up
            lean.generate(prompt, 8)
            for i in range(args.runs):
                tp, lt = one_pass(m, trace, pids, prompt, args.new_tokens, f"t{i}"), lean_pass(lean, prompt,
                                                                                             args.new_tokens)
                (trace / "profile").touch()
                time.sleep(0.5)  # the hosters' poll threads see it
                try:
                    pp = one_pass(m, trace, pids, prompt, args.new_tokens, f"p{i}")
                    lp = lean_pass(lean, prompt, args.new_tokens)
                finally:
                    (trace / "profile").unlink()
                    time.sleep(0.5)
                passes.append((tp, pp))
                lean_passes.append((lt, lp))
    parts_runs = [breakdown(t, pr) for t, pr in passes]
    parts = {k: median([r[k] for r in parts_runs]) for k in parts_runs[0]}
    lean_runs = [lean_breakdown(t, pr) for t, pr in lean_passes]
    lean_parts = {k: median([r[k] for r in lean_runs]) for k in lean_runs[0]}
    per_token = median([t["per_token"] for t, _ in passes]) * 1000
    lean_pt = median([t["per_token"] for t, _ in lean_passes]) * 1000
    profiled_pt = median([pr["per_token"] for _, pr in passes]) * 1000
    groups, lean_groups = _groups(parts), _groups(lean_parts)
    rows = [[k, f"{v:.2f}", f"{v / per_token:.0%}"] for k, v in parts.items()]
    rows += [[f"**{g} total**", f"{v:.2f}", f"{v / per_token:.0%}"] for g, v in groups.items()]
    lean_rows = [[k, f"{v:.2f}", f"{v / lean_pt:.0%}", ""] for k, v in lean_parts.items()]
    lean_rows += [[f"**{g} total**", f"{lean_groups.get(g, 0):.2f}", f"{lean_groups.get(g, 0) / lean_pt:.0%}",
                   f"{groups.get(g, 0) - lean_groups.get(g, 0):+.2f}"] for g in dict.fromkeys([*lean_groups, *groups])]
    hop_rows = []
    for (a, b), pid in zip(spans, map(str, pids)):  # hosters were started in span order
        hs = [t["hosters"][pid] for t, _ in passes]
        hp = [pr["hosters"][pid] for _, pr in passes]
        hop_rows.append([f"{a}:{b}", f"{median([x['step'] for x in hs]) * 1000:.2f}",
                         f"{median([x['span'] for x in hs]) * 1000:.2f}",
                         f"{median([_share(x['span_ops'], x['span_inner']) for x in hp]):.0%}",
                         f"{median([x['receipt'] for x in hs]) * 1000:.2f}",
                         f"{median([x['push'] for x in hs]) * 1000:.2f}"])
    lean_blocks = median([t["lean_step"] for t, _ in lean_passes]) * 1000
    print(f"model {args.model}, {args.hosters} hosters (default flags, push), {args.new_tokens} new tokens after "
          f"{args.prompt_len}; medians of {args.runs} passes; load {start_load} -> {load_avg()}")
    print(f"decode: {per_token:.2f} ms per token ({1000 / per_token:.1f} tok/s) through the chain, {lean_pt:.2f} ms "
          f"({1000 / lean_pt:.1f} tok/s) in the lean local loop; chain's profiled pass {profiled_pt:.2f} ms")
    print(fmt_table(["chain: part (ms per token)", "ms", "share"], rows))
    print()
    print(fmt_table(["lean local loop: part (ms per token)", "ms", "share", "chain minus lean"], lean_rows))
    print()
    print(fmt_table(["hop", "step ms", "span forward ms", "op share", "receipt ms", "push ms"], hop_rows))
    print(f"all blocks in the lean loop: {lean_blocks:.2f} ms per token")
    path_out = save_results(out_name, {
        "load_avg_at_start": start_load, "model": spec.__dict__, "hosters": args.hosters,
        "new_tokens": args.new_tokens, "prompt_len": args.prompt_len, "ms_per_token": per_token,
        "lean_ms_per_token": lean_pt, "lean_blocks_ms_per_token": lean_blocks,
        "profiled_ms_per_token": profiled_pt, "parts_ms": parts, "groups_ms": groups,
        "lean_parts_ms": lean_parts, "lean_groups_ms": lean_groups,
        "passes": [{"timed": t, "profiled": pr} for t, pr in passes],
        "lean_passes": [{"timed": t, "profiled": pr} for t, pr in lean_passes],
        "parts_ms_all": parts_runs, "lean_parts_ms_all": lean_runs, "load_avg_at_end": load_avg()})
    print(f"wrote {path_out}")
    return 0


def _groups(parts: dict[str, float]) -> dict[str, float]:
    """Parts summed by their group (the name before the colon; `Python+threads` counts as Python)."""
    groups: dict[str, float] = defaultdict(float)
    for k, v in parts.items():
        groups[k.split(":")[0].split("+")[0]] += v
    return dict(groups)


if __name__ == "__main__":
    sys.exit(main())
