"""Shared pieces of the benchmarks: models, hoster processes, timing, result files.

Everything runs on this machine: random-weight checkpoints written by
`subnet.model.tiny_model.make_tiny_model`, real `python -m hoster` processes on 127.0.0.1,
and 2 torch threads in every process (OMP_NUM_THREADS=2 for children,
`torch.set_num_threads(2)` here) so the distributed and local runs use the same cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from subnet.model.process_env import DEFAULTS as THREAD_POOL_DEFAULTS

THREADS = 2
ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
MODEL_CACHE = Path(os.environ.get("MESH_BENCH_MODELS", Path(tempfile.gettempdir()) / "mesh-bench-models"))

# Same environment for every process we time: the node's thread-pool defaults (idle OpenMP and
# OpenBLAS workers stop spinning soon: several processes share 2 cores; subnet/model/process_env.py),
# and exactly THREADS intra-op threads.
CHILD_ENV = {**THREAD_POOL_DEFAULTS, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS),
             "TOKENIZERS_PARALLELISM": "false",
             # Every benchmark runs on one machine: hosters listen on (and announce) loopback only. By
             # default serving nodes take every interface, and an announced address the client cannot
             # reach gets that hoster banned mid-run (benchmarks/wan.py gives its own addresses).
             "MESH_NODE_HOST_MADDRS": "/ip4/127.0.0.1/tcp/0"}
for _k, _v in CHILD_ENV.items():
    os.environ.setdefault(_k, _v)

import torch  # noqa: E402

torch.set_num_threads(THREADS)


@dataclass(frozen=True)
class ModelSpec:
    """A Llama-shaped random checkpoint (MHA: kv heads = heads)."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_layers: int = 12
    vocab_size: int = 32000

    def kwargs(self) -> dict:
        return dict(num_layers=self.num_layers, hidden_size=self.hidden_size,
                    intermediate_size=self.intermediate_size, num_heads=self.num_heads,
                    num_kv_heads=self.num_heads, vocab_size=self.vocab_size)


MODEL_A = ModelSpec("bench-a", 512, 1376, 8)
MODEL_B = ModelSpec("bench-b", 1024, 2752, 16)
MODEL_QUICK = ModelSpec("bench-quick", 128, 344, 4, num_layers=6, vocab_size=4096)
MODELS = {"a": MODEL_A, "b": MODEL_B, "quick": MODEL_QUICK}


def ensure_model(spec: ModelSpec) -> Path:
    """The checkpoint directory of `spec`, written once (random weights, fp32, seed 0)."""
    from subnet.model.tiny_model import make_tiny_model

    path = MODEL_CACHE / spec.name
    if not (path / "config.json").exists() or not (path / "model.safetensors").exists():
        tmp = MODEL_CACHE / f".{spec.name}.tmp{os.getpid()}"
        make_tiny_model(tmp, "llama", seed=0, **spec.kwargs())
        tmp.rename(path)
    return path


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def timed_runs(fn: Callable[[], object], runs: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of `runs` calls of `fn` after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def load_avg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


def save_results(name: str, data: dict) -> Path:
    """Write `benchmarks/results/<name>.json` (read by `benchmarks.plot`)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "load_avg_at_start": data.pop("load_avg_at_start", load_avg()), "cpus": os.cpu_count(),
            "torch_threads": THREADS, **data}
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


# ----------------------------------------------------------------------------- hoster processes


def scrape_metrics(url: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one Prometheus /metrics page (a hoster's)."""
    import httpx  # deferred: only benchmarks that read hosters' metrics

    from hoster.metrics import parse_samples  # deferred: as above

    return parse_samples(httpx.get(url, timeout=10).text)


def wait_buckets(metrics_urls: dict[str, str], timeout: float = 900.0) -> dict[str, dict[str, str]]:
    """Wait until no hoster is compiling a batched bucket (`mesh_hoster_batch_bucket`); hoster -> bucket -> state."""
    deadline = time.monotonic() + timeout
    while True:
        states = {}
        for h, url in metrics_urls.items():
            samples = scrape_metrics(url)
            states[h] = {dict(lab)["bucket"]: dict(lab)["state"] for (name, lab), v in samples.items()
                         if name == "mesh_hoster_batch_bucket" and v == 1}
        if not any(st == "compiling" for s in states.values() for st in s.values()):
            return states
        if time.monotonic() > deadline:
            raise TimeoutError(f"hosters still compiling batched buckets after {timeout:g}s: {states}")
        time.sleep(1.0)


def warm_buckets(run_round: Callable[[], object], metrics_urls: dict[str, str],
                 max_rounds: int = 4) -> dict[str, dict[str, str]]:
    """Run `run_round` (concurrent sessions of the load to be timed) until a round asks the hosters
    for no new batched bucket, waiting out each round's compiles: the steady state of a hoster under
    this load, so nothing compiles in the middle of a measurement. Hoster -> bucket -> state."""
    states = None
    for _ in range(max_rounds):
        run_round()
        before, states = states, wait_buckets(metrics_urls)
        if states == before:
            break
    return states


class HosterProcs:
    """Real `python -m hoster` processes on 127.0.0.1; the first one bootstraps the DHT."""

    def __init__(self, log_dir: Path | None = None):
        self.procs: list = []
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="mesh-bench-logs-"))
        self.initial_peers: list[str] = []
        self.metrics_urls: dict[str, str] = {}  # hoster name -> its /metrics (started with metrics=True)

    def start(self, model: Path, blocks: tuple[int, int], *, model_name: str | None = None,
              extra: Sequence[str] = (), wait: bool = True, launcher: str = "hoster", metrics: bool = False):
        """`launcher`: the module run with the hoster's arguments (`benchmarks.traced_hoster` wraps it);
        `metrics`: serve /metrics on a free loopback port (`self.metrics_urls[proc.name]`)."""
        from subnet.node.procs import ManagedProcess

        argv = [sys.executable, "-m", launcher, "--model", str(model), "--blocks", f"{blocks[0]}:{blocks[1]}",
                "--no-progress", "--log-level", "WARNING", "--throughput", "100", *extra]
        name = f"hoster{len(self.procs)}-{blocks[0]}-{blocks[1]}"
        if metrics:
            from chain.devnet.process import free_port  # deferred: only hosters serving /metrics

            port = free_port()
            argv += ["--metrics-port", str(port)]
            self.metrics_urls[name] = f"http://127.0.0.1:{port}/metrics"
        if model_name:
            argv += ["--model-name", model_name]
        if self.initial_peers:
            argv += ["--initial-peers", *self.initial_peers]
        proc = ManagedProcess(name, argv, log_path=self.log_dir / f"{name}.log", env=CHILD_ENV)
        self.procs.append(proc)
        if wait:
            self.wait(proc)
        return proc

    def wait(self, proc, timeout: float = 300.0) -> str:
        line = proc.wait_ready(timeout)
        if not self.initial_peers:
            self.initial_peers = [line.split()[2]]
        return line

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            with contextlib.suppress(Exception):
                p.stop(15)
        self.procs.clear()

    def __enter__(self) -> HosterProcs:
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()


def wait_decode_paths(m, timeout: float = 900.0) -> dict[str, str]:
    """Each hoster's announced `decode_path` once none says `compiling` any more: a hoster with no
    compile flag (hoster/compile_auto.py) announces at once and compiles after `hoster_ready`, so
    timing it before the choice would time the compiler too. Peer id -> eager/compiled."""
    from subnet.swarm.announcements import read_announcements

    deadline = time.monotonic() + timeout
    while True:
        paths = {a.peer_id: a.decode_path for a in read_announcements(m.manager.runtime.dht, m.manager.model_uid)}
        if paths and "compiling" not in paths.values():
            return paths
        if time.monotonic() > deadline:
            raise TimeoutError(f"hosters still compiling after {timeout:g}s: {paths}")
        time.sleep(1.0)


@contextlib.contextmanager
def client(model: Path, initial_peers: Sequence[str], model_name: str | None = None,
           linear_kernel: str | None = None, **client_kw) -> Iterator:
    """A `DistributedModelForCausalLM` that has seen every block served (`client_kw`: e.g. request_timeout)."""
    from subnet.client import DistributedModelForCausalLM

    m = DistributedModelForCausalLM.from_pretrained(model, initial_peers=list(initial_peers), model_name=model_name,
                                                    linear_kernel=linear_kernel, **client_kw)
    try:
        m.wait_until_servable(60)
        yield m
    finally:
        m.close()


def chain_spans(num_layers: int, k: int) -> list[tuple[int, int]]:
    """`k` contiguous spans covering all layers as evenly as possible."""
    bounds = [round(i * num_layers / k) for i in range(k + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(k)]


def fmt_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-markdown table."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


def exit_on_sigterm() -> None:
    """SIGTERM (e.g. from `timeout`) unwinds normally, so `HosterProcs` stops its children."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
