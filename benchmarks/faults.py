"""Failover under kill -9: streamed generations through the API while a hoster of the route dies.

    .venv/bin/python -m benchmarks.faults               # 50 generations (about 5 minutes)
    .venv/bin/python -m benchmarks.faults --runs 5      # a quick look

A bootstrap DHT peer runs in this process (so no hoster is the swarm's only entry point),
`--copies` hosters serve each of `--spans` spans of the model (every block is served
redundantly), and the OpenAI-style API (`subnet.api.create_app` over a `SwarmBackend`) runs
here under uvicorn. Every generation streams `/v1/completions` (greedy, `--tokens` tokens);
after a random token the benchmark SIGKILLs a random hoster of the generation's route (its
whole process group: a machine dying; `--kill main` kills only the main process) and starts a
replacement hoster for that span at once, so redundancy is back before the next generations.

Per generation: did it complete, are its token ids (recorded at the backend) and text identical
to a fault-free run of the same prompt, the longest gap between two streamed chunks (the SSE
events a user sees), the gap across the kill, and how many times the client re-routed. The
fault-free runs give the same gap numbers without a fault, for reference. Every wait is bounded
(`--budget` seconds in all; an HTTP read timeout per generation).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import sys
import threading
import time

if not __package__:  # also runnable as `python benchmarks/<name>.py`
    import pathlib as _pathlib

    sys.path.insert(0, str(_pathlib.Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    MODELS,
    HosterProcs,
    chain_spans,
    ensure_model,
    exit_on_sigterm,
    fmt_table,
    load_avg,
    save_results,
)

PROMPTS = [
    "Validators post probes, hosters commit and reveal, and the chain pays",
    "The quick brown fox jumps over the lazy dog while the",
    "In a distributed system every node must assume that its peers",
    "Once upon a time, in a swarm of small machines, there was",
]


class _Reroutes(logging.Handler):
    """Counts the client's `rerouted` events (subnet.client.session)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "rerouted":
            self.count += 1


def _recording_backend(model):
    """A `SwarmBackend` that also keeps the token ids of the generation in progress."""
    from subnet.api.swarm_backend import SwarmBackend

    class Recording(SwarmBackend):
        token_ids: list[int] = []
        token_times: list[float] = []
        on_token = None  # called with the number of tokens so far (the kill is timed by the generation)

        async def stream(self, model_name, prompt_ids, params):
            async for ev in super().stream(model_name, prompt_ids, params):
                if ev.token_id is not None:
                    self.token_ids.append(ev.token_id)
                    self.token_times.append(time.monotonic())
                    if self.on_token is not None:
                        self.on_token(len(self.token_ids))
                yield ev

    return Recording(model)


def stream_once(http, url: str, model_name: str, prompt: str, tokens: int, read_timeout: float = 60.0) -> dict:
    """One streamed greedy completion: text, chunk arrival times, finish reason (or error)."""
    body = {"model": model_name, "prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True}
    times: list[float] = []
    text, finish, error = "", None, None
    t0 = time.monotonic()
    try:
        with http.stream("POST", f"{url}/v1/completions", json=body, timeout=read_timeout) as r:
            if r.status_code != 200:
                return {"error": f"HTTP {r.status_code}: {r.read()[:300]!r}", "times": [], "text": ""}
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    error = str(chunk["error"])[:300]
                    continue
                for choice in chunk.get("choices", []):
                    if choice.get("text"):
                        times.append(time.monotonic())
                        text += choice["text"]
                    finish = choice.get("finish_reason") or finish
    except Exception as e:  # reported in the results
        error = f"{type(e).__name__}: {e}"[:300]
    return {"text": text, "times": times, "t0": t0, "finish": finish, "error": error}


def gaps_of(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


class Hosters:
    """`copies` hosters per span; a killed one is replaced at once (readiness checked lazily)."""

    def __init__(self, procs: HosterProcs, path, spans: list[tuple[int, int]], copies: int):
        self.procs, self.path, self.spans, self.copies = procs, path, spans, copies
        self.by_proc: dict = {}  # ManagedProcess -> span
        self.extra = ["--announce-period", "2", "--announce-ttl", "8"]

    def start(self, span: tuple[int, int]) -> None:
        self.by_proc[self.procs.start(self.path, span, extra=self.extra, wait=False)] = span

    def ready(self) -> dict[str, tuple]:
        """peer id -> (process, span) of the live, ready hosters."""
        return {p.ready_line.split()[1]: (p, s) for p, s in list(self.by_proc.items()) if p.alive and p.ready_line}

    def wait_redundant(self, timeout: float) -> None:
        """Until every span has at least 2 ready hosters (replacements may still be loading)."""
        deadline = time.monotonic() + timeout
        while True:
            counts = {s: 0 for s in self.spans}
            for _, s in self.ready().values():
                counts[s] += 1
            if min(counts.values()) >= min(2, self.copies):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"hosters per span after {timeout:.0f}s: {counts}")
            time.sleep(0.2)  # poll: a replacement hoster prints READY when it serves

    def kill(self, peer: str, mode: str) -> tuple[int, int]:
        proc, span = self.ready()[peer]
        if mode == "main":
            os.kill(proc.proc.pid, signal.SIGKILL)
        else:
            os.killpg(proc.proc.pid, signal.SIGKILL)
        # the replacement loads while the client fails over (started off the API's event loop)
        threading.Thread(target=self.start, args=(span,), daemon=True).start()
        return span

    def reap(self) -> None:
        """Kill what is left of killed hosters (with `--kill main`, their DHT process and p2p daemon)."""
        for p in list(self.by_proc):
            if not p.alive:
                p.kill()
                del self.by_proc[p]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--model", choices=sorted(MODELS), default="quick")
    ap.add_argument("--spans", type=int, default=2, help="spans in the chain (each served --copies times)")
    ap.add_argument("--copies", type=int, default=3)
    ap.add_argument("--kill", choices=["group", "main"], default="group")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", type=float, default=1800.0, help="seconds for the whole benchmark")
    ap.add_argument("--name", default="faults")
    args = ap.parse_args()
    exit_on_sigterm()
    import httpx

    from subnet.api.app import create_app
    from subnet.api.server import BackgroundServer
    from subnet.client import DistributedModelForCausalLM
    from subnet.swarm.dht import start_dht, visible_maddrs

    t_start, load = time.monotonic(), load_avg()
    spec = MODELS[args.model]
    path = ensure_model(spec)
    spans = chain_spans(spec.num_layers, args.spans)
    rng = random.Random(args.seed)
    reroutes = _Reroutes()
    session_log = logging.getLogger("subnet.client.session")
    session_log.setLevel(logging.INFO)
    session_log.addHandler(reroutes)
    dht = start_dht()
    procs = HosterProcs()
    procs.initial_peers = visible_maddrs(dht)
    hosters = Hosters(procs, path, spans, args.copies)
    model = server = None
    try:
        for s in spans:
            for _ in range(args.copies):
                hosters.start(s)
        hosters.wait_redundant(300)
        for p in hosters.by_proc:
            p.wait_ready(300)
        model = DistributedModelForCausalLM.from_pretrained(path, initial_peers=procs.initial_peers)
        model.wait_until_servable(60)
        backend = _recording_backend(model)
        server = BackgroundServer(create_app(backend, dashboard=False))
        url = server.start()
        name = backend.models()[0].id
        http = httpx.Client()

        baseline = {}
        for prompt in PROMPTS:
            backend.token_ids = []
            r = stream_once(http, url, name, prompt, args.tokens)
            assert r["error"] is None and r["finish"], f"fault-free run failed: {r['error']}"
            baseline[prompt] = (r["text"], backend.token_ids, gaps_of(r["times"]))
            backend.token_times = []
        usable = [p for p in PROMPTS if len(baseline[p][1]) >= 24]  # long enough to kill mid-answer
        assert usable, "every fault-free generation stopped early (EOS): use more --tokens or another model"
        print(f"fault-free: {[len(baseline[p][1]) for p in PROMPTS]} tokens; max gap "
              f"{max(max(b[2], default=0) for b in baseline.values()):.3f}s", flush=True)

        runs = []
        for i in range(args.runs):
            if time.monotonic() - t_start > args.budget:
                print(f"time budget spent after {i} runs", flush=True)
                break
            hosters.reap()
            hosters.wait_redundant(180)
            time.sleep(1.0)  # let the previous run's replacement settle (it may still be announcing)
            prompt = usable[i % len(usable)]
            n_base = len(baseline[prompt][1])
            kill_at = rng.randint(3, n_base - 8)  # after this many tokens
            killed: dict = {}

            def on_token(k, kill_at=kill_at, killed=killed):
                if k == kill_at and not killed:
                    routes = model.active_routes()
                    if routes:
                        span = rng.choice(routes[0])
                        killed.update(peer=span.peer_id, blocks=hosters.kill(span.peer_id, args.kill),
                                      at=time.monotonic())

            backend.token_ids, backend.token_times, backend.on_token = [], [], on_token
            before = reroutes.count
            r = stream_once(http, url, name, prompt, args.tokens)
            backend.on_token = None
            gaps, token_gaps = gaps_of(r["times"]), gaps_of(backend.token_times)
            after_kill = [b - a for a, b in zip(r["times"], r["times"][1:]) if killed and b >= killed["at"]]
            run = {"run": i, "prompt": PROMPTS.index(prompt), "kill_after_token": kill_at,
                   "killed": killed.get("blocks"), "complete": r["error"] is None and r["finish"] is not None,
                   "identical_tokens": backend.token_ids == baseline[prompt][1],
                   "identical_text": r["text"] == baseline[prompt][0], "tokens": len(backend.token_ids),
                   "max_gap_s": round(max(gaps, default=0.0), 4),
                   "max_token_gap_s": round(max(token_gaps, default=0.0), 4),
                   "kill_gap_s": round(after_kill[0], 4) if after_kill else None,
                   "reroutes": reroutes.count - before, "error": r["error"]}
            runs.append(run)
            print(json.dumps(run), flush=True)

        max_gaps = [r["max_gap_s"] for r in runs]
        token_max = [r["max_token_gap_s"] for r in runs]
        base_gaps = [g for b in baseline.values() for g in b[2]]
        summary = {
            "runs": len(runs), "complete": sum(r["complete"] for r in runs),
            "identical_tokens": sum(r["identical_tokens"] and r["complete"] for r in runs),
            "identical_text": sum(r["identical_text"] and r["complete"] for r in runs),
            "killed_mid_generation": sum(r["reroutes"] > 0 for r in runs),
            "max_gap_s": {"min": min(max_gaps, default=None), "p50": pct(max_gaps, 0.5), "p90": pct(max_gaps, 0.9),
                          "max": max(max_gaps, default=None)},
            "runs_with_max_gap_over_3s": sum(g > 3.0 for g in max_gaps),
            "max_token_gap_s": {"p50": pct(token_max, 0.5), "p90": pct(token_max, 0.9),
                                "max": max(token_max, default=None)},
            "fault_free_gap_s": {"p50": pct(base_gaps, 0.5), "max": max(base_gaps, default=None)},
        }
        print(fmt_table(["", "value"], [[k, v] for k, v in summary.items()]))
        path_out = save_results(args.name, {
            "load_avg_at_start": load, "model": spec.name, "spans": spans, "copies": args.copies,
            "kill": args.kill, "tokens": args.tokens, "seed": args.seed, "summary": summary, "runs": runs,
            "wall_s": round(time.monotonic() - t_start, 1)})
        print(f"saved {path_out}")
    finally:
        if server is not None:
            server.stop()
        if model is not None:
            model.close()
        procs.stop_all()
        dht.shutdown()


if __name__ == "__main__":
    main()
