"""Compiled decode by default: the compile mode, the persistent caches, the measured choice.

`--compile-mode auto` (the default; MESH_NODE_COMPILE sets it per process) serves eagerly at
once and compiles the one-session decode step (`hoster.compiled`) on a background thread, so
start-up to `hoster_ready` does not wait for a compiler. When the graph is ready, the thread
times compiled and eager steps of the span interleaved on a scratch cache and switches to the
compiled path only if it is faster on this machine; the choice goes in the hoster's
announcement and metrics (`decode_path`) and in a small JSON file per model shape, so a
machine where compiling does not win never pays for it again. Only a quiet timing is final:
one taken while other processes kept the cores busy (hoster.cpu_contention; say, three more
hosters compiling on the same two cores) is timed again after a pause, once no session is
open, and if no quiet timing comes, the next start compiles and times it again. Inductor's FX-graph and AOT
caches live in a persistent directory (`cache_root()/inductor`), so a second start of the
same shape loads the compiled graph instead of generating and building C++ again.

Then the same thread compiles and times the batched decode step in buckets of 2, 4 and 8 sessions
(`hoster.compiled_batch`; MESH_NODE_COMPILE_BUCKETS=0 skips them) and serves each bucket that is
faster, each on demand: only once the hoster has served `compiled_batch.DEMAND_STEPS` eager batched
steps of that size, because every bucket graph stays in memory for the life of the process (12
blocks of model b: +47 / +56 / +108 MB). A bucket measured slower on a quiet start is never compiled
again for that shape. While it compiles it holds `hoster.compiled.COMPILE_LOCK`, so the compute
thread runs those steps eagerly (torch's process-wide "fail_on_recompile" stance would refuse it).

Before compiling, the job chooses how many threads small steps use (hoster.decode_threads). `on`
(`--compile`) compiles before announcing and always serves compiled (`hoster.compiled`); `off` never
compiles. Auto compiles only what the compiled path can serve: CPU, no quantization, no adapters,
and the `onednn` (default) or `torch` linear kernel.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from hoster import cpu_contention
from hoster.compiled import COMPILE_KERNELS, compiling
from hoster.decode_threads import ThreadSwitch, choose_threads, retime_threads, span_step
from subnet.logs import event
from subnet.model.kernels import ENV_KERNEL, linear_kernel
from subnet.model.memory import trim

log = logging.getLogger(__name__)

ENV_COMPILE = "MESH_NODE_COMPILE"
ENV_CACHE = "MESH_NODE_CACHE_DIR"
ENV_BUCKETS = "MESH_NODE_COMPILE_BUCKETS"  # "0"/"off": no batched buckets (hoster.compiled_batch); default on
BUCKET_SWITCH = {"1": True, "on": True, "true": True, "0": False, "off": False, "false": False}
MODES = ("auto", "on", "off")
CHOICES_FILE = "decode_choices.json"
MAX_CHOICES = 256  # model shapes remembered per machine (oldest dropped)
MEASURE_STEPS = 24  # interleaved compiled/eager steps timed after compiling
MIN_GAIN = 1.03  # compiled must be at least this much faster to be chosen (timing noise)
RETIME_DELAYS = (30.0, 90.0, 270.0)  # seconds before each new timing of a choice made under load
IDLE_POLL = 2.0  # seconds between checks for an idle hoster before such a timing


def buckets_enabled() -> bool:
    """Auto mode also compiles and times the batched buckets (2, 4, 8 sessions) unless
    MESH_NODE_COMPILE_BUCKETS=0 (or off/false); each bucket is served only where it measured faster.
    Any other value is a ValueError: a typo must not silently leave the buckets on."""
    raw = os.environ.get(ENV_BUCKETS, "1").strip().lower()
    if raw not in BUCKET_SWITCH:
        raise ValueError(f"{ENV_BUCKETS}={raw!r}: use one of {', '.join(BUCKET_SWITCH)}")
    return BUCKET_SWITCH[raw]


def compile_mode(requested: str | None = None, force: bool = False) -> str:
    """The effective mode: `on` when forced (`--compile`), else `requested`, MESH_NODE_COMPILE or auto."""
    if force:
        return "on"
    mode = (requested or os.environ.get(ENV_COMPILE) or "auto").strip().lower()
    if mode not in MODES:
        raise ValueError(f"unknown compile mode {mode!r} (from {'--compile-mode' if requested else ENV_COMPILE}); "
                         f"choose one of {', '.join(MODES)}")
    return mode


def cache_root() -> Path:
    """The hoster's cache directory: MESH_NODE_CACHE_DIR, else $XDG_CACHE_HOME/mesh-node (~/.cache)."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mesh-node"


def _chosen_inductor_dir() -> str | None:
    """TORCHINDUCTOR_CACHE_DIR if an operator set it. Importing torch._dynamo sets it to torch's default
    (/tmp/torchinductor_<user>) in os.environ, which must not count as a choice: the graphs would
    then land in /tmp, shared by every process on the machine and gone at the next reboot."""
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir  # deferred: private, may move
    except ImportError:
        return chosen
    if chosen and os.path.abspath(chosen) == os.path.abspath(default_cache_dir()):
        return None
    return chosen


def use_persistent_cache(root: Path | None = None) -> Path:
    """Point inductor's on-disk caches (FX graphs, AOT autograd) at `root/inductor` unless the operator
    chose a directory (TORCHINDUCTOR_CACHE_DIR); inductor reads it when it first compiles."""
    directory = Path(_chosen_inductor_dir() or (root or cache_root()) / "inductor")
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory)
    import torch._functorch.config as functorch_config  # deferred: loads the compiler stack
    import torch._inductor.config as inductor_config  # deferred: loads the compiler stack

    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True
    return directory


def shape_key(config, start: int, end: int, dtype: torch.dtype, kernel: str | None = None) -> str:
    """What a compiled step's speed depends on: model shape, span, dtype, linear kernel, torch, threads, CPU."""
    fields = {k: getattr(config, k, None) for k in ("model_type", "hidden_size", "intermediate_size",
                                                     "num_attention_heads", "num_key_value_heads", "head_dim")}
    cpu = ""
    try:
        cpu = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")), "")
    except OSError:
        pass
    raw = json.dumps([fields, start, end, str(dtype), linear_kernel(kernel), torch.__version__,
                      torch.get_num_threads(), cpu], sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


class Choices:
    """The measured decode path per shape key, in a small JSON file (atomic writes, bounded)."""

    def __init__(self, root: Path | None = None):
        self.path = (root or cache_root()) / CHOICES_FILE
        self._lock = threading.Lock()

    def get(self, key: str) -> dict | None:
        record = self._read().get(key)
        return record if isinstance(record, dict) and record.get("path") in ("eager", "compiled") else None

    def put(self, key: str, record: dict) -> None:
        with self._lock:
            data = self._read()
            data.pop(key, None)
            data[key] = record
            data = dict(list(data.items())[-MAX_CHOICES:])
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(data, indent=1))
            tmp.replace(self.path)

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


def auto_compiles(mode: str, *, linear_kernel: str | None, device: str, quant: str, adapters: bool,
                  cached: dict | None) -> bool:
    """Whether a hoster in `mode` compiles its decode step (for auto: where it can, unless measured slower)."""
    if mode != "auto":
        return mode == "on"
    requested = linear_kernel or os.environ.get(ENV_KERNEL)
    if requested and requested.strip().lower() not in COMPILE_KERNELS:
        return False  # an explicit choice of a kernel a graph cannot call wins over compiling
    if torch.device(device).type != "cpu" or quant != "none" or adapters:
        return False
    # a choice timed while other processes kept the cores busy (or by an older version) is timed again
    return cached is None or cached.get("path") == "compiled" or not cached.get("quiet")


def time_paths(span, compiled, new_kv: Callable[[int], object], new_cache: Callable[[object], object],
               steps: int = MEASURE_STEPS) -> tuple[float, float]:
    """Median seconds of an eager and a compiled one-position step of the whole span, interleaved on a
    scratch cache (whatever else runs on the machine slows both alike)."""
    kv = new_kv(4096)
    cache = new_cache(kv)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, span.hidden_size, generator=gen).to(span.device, span.dtype)
    kv.reserve(16)
    span(x, cache=cache)
    kv.length = 16
    x = x[:, -1:]
    eager, comp = [], []
    for i in range(steps + 2):
        for path, times in (("eager", eager), ("compiled", comp)):
            t0 = time.perf_counter()
            kv.reserve(kv.length + 2)
            if path == "eager":
                span(x, cache=cache)
            else:
                compiled.run_unchecked(x, cache)
            kv.length += 1
            if i >= 2:
                times.append(time.perf_counter() - t0)
    return sorted(eager)[len(eager) // 2], sorted(comp)[len(comp) // 2]


def _lost(timing) -> bool:
    """Whether a remembered bucket timing ({"eager_ms", "compiled_ms"}) says the graph was not faster."""
    try:
        return float(timing["eager_ms"]) < float(timing["compiled_ms"]) * MIN_GAIN
    except (KeyError, TypeError, ValueError):
        return False  # unreadable: compile it again when asked for


def release_compiler_memory() -> None:
    """After a compilation and its timings: collect the compiler's cyclic garbage (dynamo and inductor
    leave reference cycles that Python's generational collector may not reach for a long time) and hand
    the freed heap back to the OS. Measured on 12 blocks of model (b) with every graph compiled: RSS
    1334 -> 1256 MB (malloc_trim alone: 1327 MB); the graphs in use stay. The collection holds the GIL
    (1.6 s for 166k objects after compiling 12 blocks of model a, on a loaded machine): small next to
    the compilation just done, and Python's own collector would do the same pass at a random time."""
    gc.collect()
    trim()


class AutoCompile:
    """Compile on a background thread, measure, switch `compiled.ready` on if it wins, remember the choice.

    A timing taken while other processes kept the cores busy (hoster.cpu_contention) decides what is
    served for now but is not final: it is timed again after each of RETIME_DELAYS (once no session
    is open) until a quiet timing settles it, and a choice never timed quietly is timed again at the next start.
    The same thread compiles and times each batched bucket once it is asked for (`_serve_later`)."""

    def __init__(self, compiled, key: str, choices: Choices, new_kv, new_cache,
                 on_done: Callable[[dict], None] | None = None, idle: Callable[[], bool] = lambda: True,
                 threads: ThreadSwitch | None = None):
        self.compiled, self.key, self.choices, self.idle = compiled, key, choices, idle
        self.threads = threads  # the compute thread's small-step thread count, chosen first (hoster.decode_threads)
        self.new_kv, self.new_cache, self.on_done = new_kv, new_cache, on_done
        self.path = "compiling"
        self.batches = None  # hoster.compiled_batch.CompiledBatches, once the decode step compiled and won
        self.record: dict = {}
        self.done = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()  # a bucket was asked for, or stop
        self._compiled_buckets: set[int] = set()
        self._failed_buckets: set[int] = set()  # their compile failed: eager until the next start
        compiled.prepare_only = True
        self._thread = threading.Thread(target=cpu_contention.in_background(self._run), name="compiler", daemon=True)

    def start(self) -> AutoCompile:
        self._thread.start()
        return self

    def stop(self) -> None:
        """The hoster shuts down: no more re-timing (a compilation under way ends on its own)."""
        self._stop.set()
        self._wake.set()

    @property
    def settled(self) -> bool:
        """Whether the choice rests on quiet timings (or a failure): nothing is left to time again."""
        r = self.record
        return "error" in r or (r.get("quiet", False) and r.get("buckets_quiet", True) and r.get("threads_quiet", True))

    def _run(self) -> None:
        cached = self.choices.get(self.key) or {}
        try:  # threads first: inductor builds the compiling thread's count into its code
            threads = {} if self.threads is None else choose_threads(self.threads, cached, lambda: span_step(
                self.compiled.span, self.new_kv, self.new_cache))
            with compiling():  # no compiled step of another span may hold the process-wide stance meanwhile
                seconds = self.compiled.warm_up(self.new_kv, self.new_cache)
            self.record = {"compile_s": round(seconds, 1), **threads}
            self._time_decode()
            if buckets_enabled():  # each bucket is timed on its own, whatever the one-session verdict
                self._prepare_buckets(cached)
        except Exception as e:  # a compiler failure must never take the hoster down: stay eager
            self.compiled.ready = False
            self.record = {"path": "eager", "error": repr(e)[:200]}
            self.path = "eager"
            self._failed("decode step", e)
        self._save()
        release_compiler_memory()
        event(log, "compile_job_done", path=self.record.get("path"), quiet=self.record.get("quiet"),
              buckets=",".join(map(str, self.record.get("buckets") or [])) or "none")
        self.done.set()  # the hoster now announces its path (Backend.decode_path: "compiling" until here)
        if self.on_done is not None:
            self.on_done(self.record)
        self._serve_later()

    def _time_decode(self) -> None:
        """Time both one-session paths and serve the faster; the record says how busy the machine was."""
        before = cpu_contention.sample()
        with compiling():
            eager, comp = time_paths(self.compiled.span, self.compiled, self.new_kv, self.new_cache)
        load = cpu_contention.others_load(before, cpu_contention.sample())
        wins = eager >= comp * MIN_GAIN
        self.path = "compiled" if wins else "eager"
        self.record.update(path=self.path, eager_ms=round(eager * 1e3, 3), compiled_ms=round(comp * 1e3, 3),
                           others_load=round(load, 2), quiet=load <= cpu_contention.MAX_OTHER_LOAD,
                           measured_at=round(time.time()))
        self.compiled.ready = wins  # between bucket compilations one-session steps take the graph
        event(log, "decode_path_chosen", blocks=f"{self.compiled.span.start}:{self.compiled.span.end}",
              **{k: v for k, v in self.record.items() if k not in ("bucket_timings", "thread_timings")})

    def _serve_later(self) -> None:
        """After the first choice: compile the batched buckets asked for (hoster.compiled_batch: after
        DEMAND_STEPS eager batched steps of a bucket's size), and time a choice made under load again
        after each of RETIME_DELAYS, once the hoster is idle (`Backend.idle`: timing competes with
        serving and holds the compiled steps off meanwhile) until a quiet timing settles it."""
        delays = list(RETIME_DELAYS)
        due = time.monotonic() + delays.pop(0) if delays and not self.settled else None
        while not self._stop.is_set():
            self._wake.clear()  # a bucket asked for from here on wakes the wait below
            wanted = (sorted(self.batches.requested - self._compiled_buckets - self._failed_buckets)
                      if self.batches is not None else [])
            if wanted:
                if not self._changed(lambda wanted=wanted: self._buckets(wanted), "batch_buckets_compiled"):
                    self._failed_buckets.update(wanted)  # never a loop of failing compilations
                continue
            if due is not None and time.monotonic() >= due:
                if self.settled:
                    due = None
                elif not self.idle():
                    due = time.monotonic() + IDLE_POLL
                elif not self._changed(self._retime_once, "decode_path_retimed"):
                    return  # keep serving what was chosen; the next start times it again
                else:
                    due = time.monotonic() + delays.pop(0) if delays and not self.settled else None
                continue
            if due is None and not self._may_want():
                return  # nothing left to time or to compile
            self._wake.wait(None if due is None else max(0.0, due - time.monotonic()))

    def bucket_states(self) -> dict[int, str]:
        """Each batched bucket's state, for metrics and benchmarks: `served` (its graph won), `slower`
        (timed, or remembered, as not faster), `compiling` (asked for, not timed yet), `failed` (its compile
        failed: eager until the next start), `eager` (not asked for: fewer than DEMAND_STEPS batched steps
        of its size so far), `off` (no graphs for batches here)."""
        from hoster.compiled_batch import BUCKETS  # deferred: light, but only metrics ask

        batches = self.batches
        out = {}
        for b in BUCKETS:
            if batches is None:
                out[b] = "off" if self.done.is_set() else "eager"
            elif b in batches.ready:
                out[b] = "served"
            elif b in batches.skip or b in self._compiled_buckets:
                out[b] = "slower"  # compiled and timed, and not served
            elif b in self._failed_buckets:
                out[b] = "failed"
            elif b in batches.requested:
                out[b] = "compiling"
            else:
                out[b] = "eager"
        return out

    def _may_want(self) -> bool:
        """Whether a bucket may still be asked for (the span compiled; not compiled, not known slower)."""
        from hoster.compiled_batch import BUCKETS  # deferred: only once decode compiled

        return self.batches is not None and bool(set(BUCKETS) - self._compiled_buckets - self.batches.skip)

    def _retime_once(self) -> None:
        if self.threads is not None and not self.record.get("threads_quiet", True):  # chosen under load
            self.record.update(retime_threads(self.threads, self.compiled, self.new_kv, self.new_cache))
        self._time_decode()
        if self._compiled_buckets:
            self._buckets(sorted(self._compiled_buckets))

    def _changed(self, work: Callable[[], None], what: str) -> bool:
        """Run `work` (a timing or a compilation), save the record, tell the hoster if what it serves changed."""
        was = (self.path, sorted(self.batches.ready) if self.batches else [])
        try:
            work()
        except Exception as e:
            event(log, "compile_retime_failed", level=logging.WARNING, what=what, error=repr(e)[:200])
            return False
        self._save()
        release_compiler_memory()
        event(log, what, path=self.path, quiet=self.record.get("quiet"), others_load=self.record.get("others_load"),
              buckets=",".join(map(str, self.record.get("buckets") or [])) or "none")
        if self.on_done is not None and was != (self.path, sorted(self.batches.ready) if self.batches else []):
            self.on_done(self.record)
        return True

    def _failed(self, what: str, error: BaseException) -> None:
        """A compile cut off by shutdown (the exiting interpreter refuses its pools) is INFO, not a WARNING."""
        if self._stop.is_set():
            event(log, "compile_abandoned", what=what, reason="shutdown", error=repr(error)[:120])
        else:
            event(log, "compile_failed", level=logging.WARNING, what=what, error=repr(error)[:200])

    def _save(self) -> None:
        try:
            if "error" not in self.record:  # a failed compile is not a measured choice: the next start retries
                self.choices.put(self.key, self.record)
        except OSError as e:
            event(log, "compile_choice_not_saved", level=logging.WARNING, error=repr(e)[:200])

    def _prepare_buckets(self, cached: dict) -> None:
        """The span compiled: batched steps may take bucket graphs, each compiled on demand
        (hoster.compiled_batch.DEMAND_STEPS) and served only if its own timing wins, whether or not the
        one-session graph won (a re-timing may turn that to eager after buckets were asked for: they
        must still be compiled, not left `compiling` forever). A bucket measured slower on a quiet
        earlier start of this shape is never compiled again."""
        from hoster.compiled_batch import CompiledBatches  # deferred: only once decode compiled

        batches = CompiledBatches(self.compiled)
        batches.on_demand = lambda bucket: self._wake.set()
        self.record.update(buckets=[], buckets_quiet=True)
        timings = cached.get("bucket_timings") if cached.get("buckets_quiet") else None
        if isinstance(timings, dict):  # what a quiet start measured stays known (and saved)
            batches.skip = {int(b) for b, t in timings.items() if str(b).isdigit() and _lost(t)}
            self.record["bucket_timings"] = timings
        self.batches = batches  # from here on the compute thread counts batched steps for it

    def _buckets(self, buckets: list[int]) -> None:
        """Compile (once) and time `buckets` (hoster.compiled_batch); serve those measured faster."""
        batches = self.batches
        won, timings = set(self.record.get("buckets") or []), dict(self.record.get("bucket_timings") or {})
        bucket = None
        try:
            before = cpu_contention.sample()
            for bucket in buckets:
                with compiling():  # the compute thread's compiled steps run eagerly meanwhile (COMPILE_LOCK)
                    seconds = 0.0 if bucket in self._compiled_buckets else batches.warm_up(bucket)
                    self._compiled_buckets.add(bucket)
                    eager, comp = batches.time_bucket(bucket)
                timings[str(bucket)] = {"eager_ms": round(eager * 1e3, 3), "compiled_ms": round(comp * 1e3, 3),
                                        "compile_s": round(seconds, 1)}
                if eager >= comp * MIN_GAIN:
                    won.add(bucket)
                    batches.ready.add(bucket)
                else:
                    won.discard(bucket)
                    batches.ready.discard(bucket)
            load = cpu_contention.others_load(before, cpu_contention.sample())  # compiling is this process's own
            self.record.update(buckets=sorted(won), bucket_timings=timings,
                               buckets_quiet=load <= cpu_contention.MAX_OTHER_LOAD)
            self.record.pop("bucket_error", None)
            event(log, "batch_buckets_chosen", buckets=",".join(map(str, sorted(won))) or "none",
                  timed=",".join(map(str, buckets)), quiet=self.record["buckets_quiet"])
        except Exception as e:  # batched steps stay eager; not remembered as "no bucket wins": the next start retries
            if bucket is not None and bucket not in self._compiled_buckets:
                self._failed_buckets.add(bucket)
            self.record["bucket_error"] = repr(e)[:200]
            self.record["buckets_quiet"] = False
            self._failed("batch buckets", e)
