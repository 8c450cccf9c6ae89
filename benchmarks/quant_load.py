"""Memory of loading a hoster's blocks per source format and `--quant` mode, net of the runtime.

Each measurement runs in a fresh child process: it imports torch/transformers/torchao and runs a
tiny quantized layer (so the libraries' own memory is in the baseline), resets the kernel's peak
RSS counter (`/proc/self/clear_refs` 5), then `load_blocks` of every layer from a safetensors
directory or a GGUF file. Printed: the RSS held after loading and the peak during loading, both
minus the baseline, and their ratio to the float32 weights' bytes (the issue's "hoster RSS vs
float32": no KV cache is filled, and the cache is in `--dtype` whatever the mode).

    python -m benchmarks.quant_load [--model b] [--modes none,int8,nf4] [--sources safetensors,gguf]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

if not __package__:  # also runnable as `python benchmarks/<name>.py`
    import pathlib as _pathlib

    sys.path.insert(0, str(_pathlib.Path(__file__).resolve().parent.parent))

from benchmarks.common import MODEL_CACHE, MODELS, ensure_model, exit_on_sigterm, fmt_table, load_avg  # noqa: E402


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def child(path: str, mode: str) -> dict:
    """Runs in the child: baseline, reset peak, load every layer, report."""
    import torch

    from subnet.model.blocks import load_blocks, load_config
    from subnet.model.quant import check_quant

    n = load_config(path).num_hidden_layers
    check_quant(mode, torch.float32, "cpu")  # torchao imported and its kernels run once
    torch.randn(64, 64) @ torch.randn(64, 64)
    base = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    span = load_blocks(path, 0, n, progress=False, quant=mode, linear_kernel="torch")
    return {"base_mb": base, "held_mb": _status_mb("VmRSS") - base, "peak_mb": _status_mb("VmHWM") - base,
            "weights_mb": span.weight_bytes() / 2**20}


def measure(path: str, mode: str) -> dict:
    code = ("import json, sys; from benchmarks.quant_load import child; "
            f"print('RESULT ' + json.dumps(child({path!r}, {mode!r})))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1800)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"load child failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(line[len("RESULT "):])


def gguf_of(spec) -> str:
    """An F32 GGUF file of the benchmark model (written once next to its safetensors)."""
    from subnet.model.tiny_model import write_gguf

    out = MODEL_CACHE / f"{spec.name}-f32.gguf"
    if not out.exists():
        tmp = out.with_suffix(f".tmp{os.getpid()}.gguf")
        write_gguf(ensure_model(spec), tmp, "f32")
        tmp.rename(out)
    return str(out)


def table(spec, modes: list[str], sources: list[str]) -> tuple[list[list[str]], list[dict]]:
    paths = {"safetensors": str(ensure_model(spec))}
    if "gguf" in sources:
        paths["gguf"] = gguf_of(spec)
    results = []
    for source in sources:
        for mode in modes:
            r = {"source": source, "mode": mode, **measure(paths[source], mode)}
            results.append(r)
            print(f"load {source} {mode}: {r}", flush=True)
    f32 = next((r["weights_mb"] for r in results if r["mode"] == "none"), None)
    if f32 is None:
        f32 = measure(paths["safetensors"], "none")["weights_mb"]
    rows = [[r["source"], r["mode"], f"{r['weights_mb']:.1f}", f"{r['held_mb']:.0f}", f"{r['held_mb'] / f32:.3f}",
             f"{r['peak_mb']:.0f}", f"{r['peak_mb'] / f32:.3f}"] for r in results]
    return rows, results


HEADERS = ["source", "quant", "weights MB", "RSS held MB", "held x f32 weights", "RSS peak MB",
           "peak x f32 weights"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="b", choices=sorted(MODELS))
    p.add_argument("--modes", default="none,int8,nf4")
    p.add_argument("--sources", default="safetensors,gguf")
    args = p.parse_args(argv)
    exit_on_sigterm()
    start = load_avg()
    rows, _ = table(MODELS[args.model], [m for m in args.modes.split(",") if m],
                    [s for s in args.sources.split(",") if s])
    print(f"\nmodel {args.model}, all layers loaded in one process; load avg {start} -> {load_avg()} "
          "(2 vCPUs shared with other jobs)")
    print(fmt_table(HEADERS, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
