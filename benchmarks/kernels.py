"""Linear-layer kernels on the benchmark models' shapes: `F.linear` vs OpenBLAS vs packed oneDNN.

    .venv/bin/python -m benchmarks.kernels          # models a and b, 1, 8 and 512 rows
    .venv/bin/python -m benchmarks.kernels --quick

Why `subnet.model.kernels` exists: decode multiplies a few rows by every weight of a block per
token. For each weight shape of a decoder layer (and the client's LM head) this times
`F.linear` (what transformers calls: torch's MKL), `BlasLinear` (numpy's OpenBLAS, the
default) and `PackedLinear` (oneDNN, reordered weight) on the same inputs, interleaved, and
prints the ratios to `F.linear`. Every weight is a distinct tensor, cycled through enough
copies (>= 150 MB) that none stays in cache, as in a real forward over many layers. Also
printed: a whole decoder-layer stack (12 layers of the model, one decode step at 1 and 8
rows) on each kernel, via the hoster's own `load_blocks`.
"""

from __future__ import annotations

import argparse
import sys
import time

if not __package__:  # also runnable as `python benchmarks/<name>.py`
    import pathlib as _pathlib

    sys.path.insert(0, str(_pathlib.Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.common import MODELS, ensure_model, exit_on_sigterm, fmt_table, load_avg, median, save_results

FAST = ("blas", "onednn")  # subnet.model.kernels' kernels, each compared with torch's F.linear


def _time(fn, repeats: int) -> float:
    for _ in range(5):
        fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def bench_shape(in_f: int, out_f: int, rows: int, passes: int) -> dict:
    from subnet.model.kernels import convert_linear

    copies = max(2, int(150e6 // (in_f * out_f * 4)))
    g = torch.Generator().manual_seed(0)
    plain = [nn.Linear(in_f, out_f, bias=False).requires_grad_(False) for _ in range(copies)]
    for m in plain:
        nn.init.normal_(m.weight, generator=g)
    kernels = {"torch": plain} | {k: [convert_linear(m, k) for m in plain] for k in FAST}
    x = torch.randn(rows, in_f, generator=g)
    repeats = max(5, min(300, int(3e8 // (in_f * out_f * 4 * max(1, rows // 16)))))
    times: dict[str, list[float]] = {k: [] for k in kernels}
    with torch.inference_mode():
        for _ in range(passes):
            for name, mods in kernels.items():
                it = iter(range(10**9))
                times[name].append(_time(lambda mods=mods, it=it: mods[next(it) % copies](x), repeats))
    return {k: median(v) for k, v in times.items()}


def bench_stack(key: str, rows: int, passes: int) -> dict:
    """One decode step (`rows` sequences, 64 cached positions each) through all layers, on each kernel."""
    from subnet.model.blocks import load_blocks

    spec = MODELS[key]
    path = ensure_model(spec)
    out = {}
    spans = {k: load_blocks(path, 0, spec.num_layers, progress=False, linear_kernel=k) for k in ("torch", *FAST)}
    g = torch.Generator().manual_seed(1)
    prefix = torch.randn(rows, 64, spec.hidden_size, generator=g)
    step = torch.randn(rows, 1, spec.hidden_size, generator=g)
    times: dict[str, list[float]] = {k: [] for k in spans}
    caches = {}
    for name, span in spans.items():
        caches[name] = span.new_cache()
        span(prefix, cache=caches[name])

    def one(name):
        span, cache = spans[name], caches[name]
        span(step, cache=cache)
        cache.crop(-1)  # back to the 64-position prefix

    with torch.inference_mode():
        for _ in range(passes):
            for name in spans:
                times[name].append(_time(lambda name=name: one(name), 20))
    for name in spans:
        out[name] = median(times[name])
    return out


def _cells(t: dict) -> list[str]:
    return ([f"{t[k] * 1e6:.0f}" for k in ("torch", *FAST)]
            + [f"{t['torch'] / t[k]:.2f}x" for k in FAST])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="a,b")
    p.add_argument("--rows", default="1,8,512")
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="kernels")
    args = p.parse_args(argv)
    exit_on_sigterm()
    from subnet.model.kernels import kernel_supported

    missing = [k for k in FAST if not kernel_supported(k, torch.float32, "cpu")]
    if missing:
        print(f"kernels unavailable in this build: {', '.join(missing)}", file=sys.stderr)
        return 1
    if args.quick:
        args.models, args.passes, args.out = "quick", 1, "kernels-quick"
    start = load_avg()
    rows_list = [int(r) for r in args.rows.split(",")]
    table, results = [], {"shapes": [], "stacks": []}
    for key in args.models.split(","):
        spec = MODELS[key]
        h, i, v = spec.hidden_size, spec.intermediate_size, spec.vocab_size
        shapes = {"q/k/v/o": (h, h), "gate/up": (h, i), "down": (i, h), "lm_head": (h, v)}
        for rows in rows_list:
            for what, (fi, fo) in shapes.items():
                t = bench_shape(fi, fo, rows, args.passes)
                results["shapes"].append({"model": key, "weight": what, "in": fi, "out": fo, "rows": rows, **t})
                table.append([key, what, f"{fi}x{fo}", rows, *_cells(t)])
            if rows <= 64:  # a decode step; 512 rows is prefill, covered per shape
                t = bench_stack(key, rows, args.passes)
                results["stacks"].append({"model": key, "rows": rows, **t})
                table.append([key, f"{spec.num_layers} layers, decode step", "", rows, *_cells(t)])
    print(fmt_table(["model", "weight", "in x out", "rows", "F.linear us", "blas us", "onednn us",
                     "blas speed-up", "onednn speed-up"], table))
    path = save_results(args.out, {"load_avg_at_start": start, **results, "load_avg_at_end": load_avg()})
    print(f"load average {start} -> {load_avg()}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
