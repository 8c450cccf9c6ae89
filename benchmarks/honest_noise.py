"""Honest numeric noise of one block's probe output: what the scoring curve must forgive.

    .venv/bin/python -m benchmarks.honest_noise            # models quick and a
    .venv/bin/python -m benchmarks.honest_noise --quick    # model quick only
    .venv/bin/python -m benchmarks.honest_noise --classes  # within each precision class (model a)

Two honest hosters run the same block on the same probe input but not the same arithmetic:
another linear kernel (oneDNN / OpenBLAS / torch's F.linear), another thread count, the probe
row inside a larger batch, torch.compile. For every probe block this prints the relative L2
distance `||out - ref|| / ||ref||` of each variant to the reference run (oneDNN, 2 threads,
batch 1, eager, float32: what a validator with `--model` computes), the worst over blocks and
seeds, and for scale the distance of a bfloat16 run and of a 1% shading. docs/PROTOCOL.md
(Scoring calibration) quotes these numbers.
"""

from __future__ import annotations

import argparse
import sys

if not __package__:  # also runnable as `python benchmarks/<name>.py`
    import pathlib as _pathlib

    sys.path.insert(0, str(_pathlib.Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import MODELS, ensure_model, exit_on_sigterm, fmt_table, load_avg  # noqa: E402
from consensus.probe import make_probe_spec, probe_input  # noqa: E402
from consensus.scoring import DEFAULT_PARAMS, hoster_curve  # noqa: E402
from subnet.model.blocks import load_blocks  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.double().reshape(-1), b.double().reshape(-1)
    return float(torch.linalg.vector_norm(a64 - b64) / torch.linalg.vector_norm(b64))


def run(span, x: torch.Tensor, b: int) -> torch.Tensor:
    with torch.inference_mode():
        return span(x.to(span.dtype), start=b, end=b + 1).float()


def variants(path: str, blocks: list[int], x: dict[int, torch.Tensor]) -> dict[str, dict[int, torch.Tensor]]:
    """Outputs of each way of computing the probe blocks (float32 unless named)."""
    out: dict[str, dict[int, torch.Tensor]] = {}
    torch.set_num_threads(2)
    spans = {k: load_blocks(path, 0, max(blocks) + 1, "float32", linear_kernel=k, progress=False)
             for k in ("onednn", "blas", "torch")}
    out["reference (onednn, 2 threads)"] = {b: run(spans["onednn"], x[b], b) for b in blocks}
    out["blas kernel"] = {b: run(spans["blas"], x[b], b) for b in blocks}
    out["torch kernel"] = {b: run(spans["torch"], x[b], b) for b in blocks}
    torch.set_num_threads(1)
    out["1 thread"] = {b: run(spans["onednn"], x[b], b) for b in blocks}
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(7)
    batched = {}
    for b in blocks:
        others = torch.rand((5,) + tuple(x[b].shape[1:]), generator=gen) * 2 - 1
        batched[b] = run(spans["onednn"], torch.cat([x[b], others]), b)[:1]
    out["batch of 6"] = batched
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * len(blocks))
    compiled = torch.compile(spans["torch"].run_layers, dynamic=False)
    comp = {}
    with torch.inference_mode():
        for b in blocks:
            comp[b] = compiled(x[b], None, None, None, b, b + 1).float()
    out["torch.compile"] = comp
    bf16 = load_blocks(path, 0, max(blocks) + 1, "bfloat16", linear_kernel="torch", progress=False)
    out["bfloat16 weights"] = {b: run(bf16, x[b], b) for b in blocks}
    ref = out["reference (onednn, 2 threads)"]
    out["1% shading (x 1.01)"] = {b: ref[b] * 1.01 for b in blocks}
    return out


def class_variants(path: str, blocks: list[int], x: dict[int, torch.Tensor], cls: str) -> dict[str, dict]:
    """Outputs of one precision class computed the ways honest hosters of that class may differ."""
    dtype, quant = (cls, "none") if cls in ("float32", "bfloat16", "float16") else ("float32", cls)
    torch.set_num_threads(2)
    end = max(blocks) + 1
    span = load_blocks(path, 0, end, dtype, quant=quant, progress=False)
    out = {"reference": {b: run(span, x[b], b) for b in blocks}}
    torch.set_num_threads(1)
    out["1 thread"] = {b: run(span, x[b], b) for b in blocks}
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(7)
    out["batch of 6"] = {b: run(span, torch.cat([x[b], torch.rand((5,) + tuple(x[b].shape[1:]), generator=gen)
                                                 * 2 - 1]), b)[:1] for b in blocks}
    if quant == "none":
        other = load_blocks(path, 0, end, dtype, linear_kernel="torch", progress=False)
        out["torch kernel"] = {b: run(other, x[b], b) for b in blocks}
    return out


def class_rows(name: str, epochs: int) -> list[list[str]]:
    """Worst within-class distance per class and variant, and the distance between classes."""
    from consensus.class_scoring import class_params  # deferred: only the --classes table needs it

    spec = MODELS[name]
    path = str(ensure_model(spec))
    worst: dict[tuple[str, str], float] = {}
    for epoch in range(epochs):
        probe = make_probe_spec(bytes([epoch]) * 32, 1, epoch, hidden=spec.hidden_size, num_blocks=spec.num_layers)
        blocks = list(probe.blocks)
        x = {b: probe_input(probe, b) for b in blocks}
        refs = {}
        for cls in ("float32", "bfloat16", "int8", "nf4"):
            outs = class_variants(path, blocks, x, cls)
            refs[cls] = outs["reference"]
            for label, o in outs.items():
                if label != "reference":
                    d = max(rel(o[b], refs[cls][b]) for b in blocks)
                    worst[(cls, label)] = max(worst.get((cls, label), 0.0), d)
        for a, b in (("int8", "nf4"), ("int8", "float32"), ("nf4", "float32"), ("bfloat16", "float32")):
            d = min(rel(refs[b][k], refs[a][k]) for k in blocks)  # the liar's best block
            worst[(a, f"{b} served (best block)")] = min(worst.get((a, f"{b} served (best block)"), 1e9), d)
    return [[name, cls, label, f"{d:.2e}", f"{hoster_curve(d, class_params(cls)):.4f}"]
            for (cls, label), d in worst.items()]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="model quick only")
    ap.add_argument("--epochs", type=int, default=3, help="probe seeds (epochs) per model")
    ap.add_argument("--classes", action="store_true", help="noise within each precision class (model a)")
    args = ap.parse_args(argv)
    exit_on_sigterm()
    print(f"load average before: {load_avg()}")
    if args.classes:
        rows = class_rows("a", args.epochs)
        print(fmt_table(["model", "declared class", "computed as", "worst rel. L2 to class reference",
                         "score (class params)"], rows))
        print(f"load average after: {load_avg()}  (2 cores shared with other jobs)")
        return
    rows = []
    for name in (("quick",) if args.quick else ("quick", "a")):
        spec = MODELS[name]
        path = str(ensure_model(spec))
        worst: dict[str, float] = {}
        for epoch in range(args.epochs):
            probe = make_probe_spec(bytes([epoch]) * 32, 1, epoch, hidden=spec.hidden_size, num_blocks=spec.num_layers)
            blocks = list(probe.blocks)
            x = {b: probe_input(probe, b) for b in blocks}
            outs = variants(path, blocks, x)
            ref = outs["reference (onednn, 2 threads)"]
            for label, o in outs.items():
                d = max(rel(o[b], ref[b]) for b in blocks)
                worst[label] = max(worst.get(label, 0.0), d)
        for label, d in worst.items():
            rows.append([name, label, f"{d:.2e}", f"{hoster_curve(d, DEFAULT_PARAMS):.4f}"])
    print(fmt_table(["model", "variant", "worst rel. L2 to reference", "score"], rows))
    print(f"load average after: {load_avg()}  (2 cores shared with other jobs)")


if __name__ == "__main__":
    main()
