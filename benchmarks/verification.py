"""The cost of verified serving: client-side checks and validator spot checks.

    .venv/bin/python -m benchmarks.verification           # model a, 64 and 128 new tokens (a few minutes)
    .venv/bin/python -m benchmarks.verification --quick   # small model, one pass

Two `python -m hoster` processes each serve every block (one serves a session, the other is
there to recompute checked steps). Greedy generation tokens/s (new tokens / wall time of a
whole `generate`, prefill included) with:
- checks off: no receipt verification, no recomputation (`verify_fraction=0`, no warm-up);
- default: every step's receipt verified, the first step of each hoster in a session and 2%
  of the others recomputed on the other hoster (`ClientConfig` defaults: the checks run beside
  the token loop, which holds back the tokens of a step until its check passes and rewinds
  when one fails, `subnet/client/holdback.py`; the wall time includes waiting for the last
  pending checks at the end);
- all steps: every step recomputed (`verify_fraction=1`), for scale.
Runs are interleaved (off, default, all, off, ...) so load changes hit all alike; medians after
one warm-up; the tokens of every mode are checked equal. Hosters sign receipts in every mode
(that cost is in all rows).

Validator spot checks: CPU seconds (this process: embedding, reference blocks, the session's
wire and receipt work) of one spot-check session per hoster, i.e. per validator per epoch
with that many hosters, and the wall time of one check.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

if not __package__:  # also runnable as `python benchmarks/<name>.py`
    import pathlib as _pathlib

    sys.path.insert(0, str(_pathlib.Path(__file__).resolve().parent.parent))

import torch  # noqa: E402  (after benchmarks.common set the thread count)

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

MODES: dict[str, dict] = {"off": dict(verify_fraction=0.0, verify_warmup=False), "default": {},
                          "all steps": dict(verify_fraction=1.0)}


def bench(key: str, new_tokens: list[int], runs: int, prompt_len: int, spot_checks: int) -> dict:
    from subnet.client.manager import ClientConfig

    spec = MODELS[key]
    path = ensure_model(spec)
    prompt = torch.randint(0, spec.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(7))
    out: dict = {"model": dataclasses.asdict(spec), "tokens_per_s": {}, "ratios": {}}
    with HosterProcs() as procs:
        peers = [procs.start(path, (0, spec.num_layers)) for _ in range(2)]
        with client(path, procs.initial_peers) as model:
            base = model.manager.config
            defaults = ClientConfig()
            made: list = []  # the verifiers of this generation's sessions (to count the checks they ran)
            real_make = model.manager.make_verifier
            model.manager.make_verifier = lambda: made.append(real_make()) or made[-1]
            configs = {name: dataclasses.replace(base, **{"verify_fraction": defaults.verify_fraction,
                                                          "verify_warmup": defaults.verify_warmup, **kw})
                       for name, kw in MODES.items()}
            for n in new_tokens:
                times: dict[str, list[float]] = {m: [] for m in MODES}
                cpu: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}  # (client, hosters) CPU s
                tokens: dict[str, list[int]] = {}
                pids = [p.proc.pid for p in procs.procs]
                checks: dict[str, list[int]] = {m: [] for m in MODES}  # recomputations done per generation
                for r in range(runs + 1):
                    for mode, cfg in configs.items():
                        model.manager.config = cfg
                        made.clear()
                        c0, h0, t0 = time.process_time(), sum(map(proc_cpu, pids)), time.perf_counter()
                        ids = model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False)
                        dt = time.perf_counter() - t0
                        c1, h1 = time.process_time(), sum(map(proc_cpu, pids))
                        tokens.setdefault(mode, ids[0].tolist())
                        assert ids[0].tolist() == tokens[mode] == tokens["off"], f"{mode} tokens differ"
                        if r > 0:
                            times[mode].append(dt)
                            cpu[mode].append((c1 - c0, h1 - h0))
                            checks[mode].append(sum(v.checked for v in made if v is not None))
                out.setdefault("checks_per_generation", {})[n] = checks
                print(f"{n} new tokens, checks per generation: {checks}", flush=True)
                cpu_per_token = {m: {"client_ms": 1000 * median([c for c, _ in v]) / n,
                                     "hosters_ms": 1000 * median([h for _, h in v]) / n} for m, v in cpu.items()}
                out.setdefault("cpu_ms_per_token", {})[n] = cpu_per_token
                print(f"{n} new tokens, CPU ms per token (client / both hosters): " + ", ".join(
                    f"{m} {c['client_ms']:.1f} / {c['hosters_ms']:.1f}" for m, c in cpu_per_token.items()), flush=True)
                tps = {m: n / median(t) for m, t in times.items()}
                out["tokens_per_s"][n] = tps
                out["ratios"][n] = {m: tps[m] / tps["off"] for m in MODES}
                print(f"{n} new tokens: " + ", ".join(f"{m} {v:.1f} tokens/s ({out['ratios'][n][m]:.3f}x)"
                                                      for m, v in tps.items()), flush=True)
            model.manager.config = base
        out["spot_checks"] = spot_cost(path, procs, spec, spot_checks, [p.name for p in peers])
    return out


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process used so far, from /proc."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spot_cost(path, procs: HosterProcs, spec, count: int, names: list[str]) -> dict:
    """CPU and wall seconds of `count` spot checks against the running hosters (honest: no evidence)."""
    from consensus.spot_checks import spot_check_plan
    from keys import NodeKey
    from subnet.client.discovery import read_servers
    from subnet.client.spot_session import SpotCheckClient
    from subnet.model.blocks import model_uid
    from validator.evidence import local_reference
    from validator.spot_checks import SpotCheckDuty, local_embedding

    uid = model_uid(path)
    runner = SpotCheckClient(procs.initial_peers, uid)
    try:
        runner.rotate()
        hosters = [(s.peer_id, s.start, s.end) for s in read_servers(runner.runtime.dht, uid)]
        duty = SpotCheckDuty(None, NodeKey.generate(), None, uid, spec.vocab_size, runner.run,
                             local_reference(str(path), spec.num_layers), local_embedding(str(path)))
        peer, start, end = hosters[0]
        duty.check_one(0, peer, start, end, spot_check_plan(bytes(32), 1, 0, peer, spec.vocab_size))  # warm-up
        cpu, wall, results = [], [], []
        for i in range(count):
            peer, start, end = hosters[i % len(hosters)]
            plan = spot_check_plan(bytes([i + 1]) * 32, 1, i + 1, peer, spec.vocab_size)
            c0, w0 = time.process_time(), time.perf_counter()
            results.append(duty.check_one(i + 1, peer, start, end, plan))
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
        assert "lied" not in results and "ok" in results, results  # honest hosters; at least one check ran
        ok = [i for i, r in enumerate(results) if r == "ok"]  # a failed session (e.g. a dial) is not a check
        return {"checks": len(ok), "failed": len(results) - len(ok),
                "cpu_s_per_check": median([cpu[i] for i in ok]), "wall_s_per_check": median([wall[i] for i in ok]),
                "cpu_s_per_epoch_per_hoster": median([cpu[i] for i in ok])}
    finally:
        runner.close()


def report(key: str, r: dict) -> str:
    rows = []
    for n, tps in r["tokens_per_s"].items():
        for mode, v in tps.items():
            rows.append([key, n, mode, f"{v:.1f}", f"{r['ratios'][n][mode]:.3f}"])
    table = fmt_table(["model", "new tokens", "client checks", "tokens/s", "vs off"], rows)
    cpu_rows = [[key, n, mode, f"{c['client_ms']:.1f}", f"{c['hosters_ms']:.1f}",
                 f"{(c['client_ms'] + c['hosters_ms']) / (cm['off']['client_ms'] + cm['off']['hosters_ms']):.3f}"]
                for n, cm in r["cpu_ms_per_token"].items() for mode, c in cm.items()]
    table += "\n\n" + fmt_table(["model", "new tokens", "client checks", "client CPU ms/token",
                                  "hosters CPU ms/token", "total CPU vs off"], cpu_rows)
    s = r["spot_checks"]
    return (f"{table}\n\nspot checks ({key}): {s['cpu_s_per_check'] * 1000:.0f} ms CPU and "
            f"{s['wall_s_per_check'] * 1000:.0f} ms wall per check (median of {s['checks']}); a validator "
            f"spends that much CPU per hoster per epoch")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="a", choices=sorted(MODELS))
    p.add_argument("--new-tokens", default="64,128")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--spot-checks", type=int, default=6)
    p.add_argument("--quick", action="store_true", help="small model, 32 new tokens, one pass")
    p.add_argument("--out", default="verification")
    args = p.parse_args(argv)
    exit_on_sigterm()
    # the hosters on loopback: a client cannot route to a hoster whose announced 0.0.0.0-derived
    # addresses are not dialable here ("routing: not found"), and then no check ever runs
    os.environ.setdefault("MESH_NODE_HOST_MADDRS", "/ip4/127.0.0.1/tcp/0")
    if args.quick:
        args.model, args.new_tokens, args.runs, args.spot_checks, args.out = "quick", "32", 1, 2, "verification-quick"
    start = load_avg()
    r = bench(args.model, [int(x) for x in args.new_tokens.split(",")], args.runs, args.prompt_len, args.spot_checks)
    r["load_avg_at_start"], r["load_avg_at_end"] = start, load_avg()
    print(report(args.model, r), flush=True)
    path = save_results(args.out, r)
    print(f"load average {start} -> {r['load_avg_at_end']} (2 cores shared with other jobs); wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
