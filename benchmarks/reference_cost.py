"""Validator CPU per epoch with reference computation on vs off.

    .venv/bin/python -m benchmarks.reference_cost            # models quick and a
    .venv/bin/python -m benchmarks.reference_cost --quick    # model quick only

A validator's own per-epoch compute is scoring (decode the hosters' revealed outputs, score
every probe block) plus, with `--model` holding the weights, the reference: every probe block
run once on its 8-token probe input (`validator.reference.ReferenceModel`), encoded and
committed, and the scoring against it. This measures both in one process, interleaved, as CPU
seconds (`time.process_time`, all threads) per epoch, for 3 hosters each serving every block;
the DHT traffic (one reveal more per epoch) is not included. Model weights load once at the
first epoch and are reported separately.
"""

from __future__ import annotations

import argparse
import sys
import time

if not __package__:  # also runnable as `python benchmarks/<name>.py`
    import pathlib as _pathlib

    sys.path.insert(0, str(_pathlib.Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import MODELS, ensure_model, exit_on_sigterm, fmt_table, load_avg, median  # noqa: E402
from consensus.commit import commitment, new_salt  # noqa: E402
from consensus.encoding import decode_tensor, encode_block_outputs, encode_tensor  # noqa: E402
from consensus.probe import make_probe_spec  # noqa: E402
from consensus.scoring import score_hosters  # noqa: E402
from validator.reference import ReferenceModel  # noqa: E402

HOSTERS = 3


def _epoch(spec, encoded: dict[str, dict[int, bytes]], model: ReferenceModel | None) -> float:
    """CPU seconds of one epoch's validator compute (decode + [reference] + score)."""
    t0 = time.process_time()
    outputs = {p: {b: decode_tensor(d) for b, d in outs.items()} for p, outs in encoded.items()}
    refs = None
    if model is not None:
        ref = model.outputs(spec, list(spec.blocks))
        raw = {b: encode_tensor(t) for b, t in ref.items()}
        commitment(new_salt(), encode_block_outputs(1, spec.epoch, "validator", raw))
        refs = {"validator": ref}
    res = score_hosters(outputs, references=refs, expected_shape=spec.shape)
    assert min(res.scores.values()) > 0.99
    return time.process_time() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="model quick only")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (OpenMP spin-waits count as CPU under load)")
    args = ap.parse_args(argv)
    exit_on_sigterm()
    torch.set_num_threads(args.threads)
    print(f"load average before: {load_avg()}")
    rows = []
    for name in (("quick",) if args.quick else ("quick", "a")):
        spec_m = MODELS[name]
        path = str(ensure_model(spec_m))
        model = ReferenceModel(path, spec_m.num_layers)
        t0 = time.process_time()
        warm = make_probe_spec(b"\xff" * 32, 1, 0, hidden=spec_m.hidden_size, num_blocks=spec_m.num_layers)
        model.outputs(warm, [0])  # loads the weights
        load_cpu = time.process_time() - t0
        on, off = [], []
        for epoch in range(1, args.epochs + 1):
            spec = make_probe_spec(bytes([epoch]) * 32, 1, epoch, hidden=spec_m.hidden_size,
                                   num_blocks=spec_m.num_layers)
            truth = model.outputs(spec, list(spec.blocks))  # the hosters' outputs (honest)
            encoded = {f"h{i}": {b: encode_tensor(t) for b, t in truth.items()} for i in range(HOSTERS)}
            off.append(_epoch(spec, encoded, None))
            on.append(_epoch(spec, encoded, model))
        rows.append([name, spec_m.num_layers, f"{median(off) * 1e3:.1f}", f"{median(on) * 1e3:.1f}",
                     f"{median(on) / median(off):.1f}x", f"{load_cpu:.2f}"])
    print(fmt_table(["model", "blocks", "CPU ms/epoch, reference off", "reference on", "on / off",
                     "weight load CPU s (once)"], rows))
    print(f"load average after: {load_avg()}  (2 cores shared with other jobs; epochs of {HOSTERS} hosters; "
          f"{args.threads} torch threads)")


if __name__ == "__main__":
    main()
