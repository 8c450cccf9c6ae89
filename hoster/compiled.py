"""An optional compiled decode step (`hoster --compile`): torch.compile of the served span.

A one-sequence decode step through a few small layers is dominated by launching ops, not
by arithmetic: on model (a) about 35-40% of a 4-block step is the ~35 small ops per layer
around the 7 matrix products (norms, rotary embedding, residual adds, SiLU), each with its
own dispatch and memory pass, and that part grows most when the hoster was idle. Inductor
fuses those into a few generated C++ loops and keeps the matrix products as MKL calls on
the layers' own weights (no copy, no freezing): a step of 4 blocks took 5.4 ms against
6.4 ms eager (in one process, interleaved); `benchmarks.generation`'s "3 hosters, compiled"
row shows what that does to a whole chain.

What is compiled, and when:

- only one-position steps of a one-row session over the hoster's whole span: the case a
  lone chat session hits on every token. Prompts, batched steps of several sessions and
  sub-ranges keep the eager path (they have other shapes, and batches use per-session
  attention that compiling would specialise on the number of sessions);
- the K/V length and buffer capacity are dynamic, so a few graphs (a step that exactly fills
  its buffer gets its own) serve every session and length: `warm_up` compiles them at
  start-up, before the hoster announces;
- after warm-up a step that would need a new compilation (a guard the warm-up did not
  cover) raises instead of compiling for tens of seconds on the compute thread, and runs
  eagerly; nothing was written to the cache when that happens (guards run first).

Works with the `onednn` (default) and `torch` linear kernels: oneDNN's packed weights enter the
graph as one opaque op each (`subnet.model.kernels.packed_linear`), which inductor calls while it
fuses everything around them; the OpenBLAS kernel calls numpy (a graph break per product). Results differ from the eager
path by float32 rounding only (fused loops sum in another order); the `forward` RPC and
validator probes never use it, so consensus outputs stay the eager ones.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import torch

from subnet.logs import event
from subnet.model.blocks import BlockSpan
from subnet.model.kernels import linear_kernel

log = logging.getLogger(__name__)

COMPILE_KERNELS = ("onednn", "torch")  # linear kernels a compiled graph can call (see the module docstring)
RECOMPILE_LIMIT = 64  # graphs per code object before dynamo gives up compiling (its default is 8)
SLACK = 2  # positions a compiled step reserves: its own plus one spare (see `serves`)
MAX_FALLBACKS = 8  # steps refused by the compiled graph before the hoster stops trying it
# torch raises a plain RuntimeError for a refused recompilation; its message is the only marker
RECOMPILE_REFUSED = "Detected recompile when torch.compile stance is 'fail_on_recompile'"

# torch.compiler.set_stance is process-wide, not per thread: while the compute thread runs a compiled
# step under "fail_on_recompile", a compilation on any other thread (the background compile of
# hoster.compile_auto) is refused as well. So a compiled step and a compilation never overlap: a step
# takes the graph only if it gets this lock at once (else it runs eagerly, a few ms); a background
# compilation holds it throughout (tens of seconds, while steps run eagerly).
COMPILE_LOCK = threading.Lock()


@contextlib.contextmanager
def compiling():
    """Hold off compiled steps while this thread compiles or times graphs (waits for a step in flight)."""
    with COMPILE_LOCK:
        yield


def kernel_for_compile(requested: str | None) -> str:
    """The linear kernel of a compiled hoster (the default one unless chosen); `blas` is an error."""
    kernel = linear_kernel(requested)
    if kernel not in COMPILE_KERNELS:
        raise ValueError(f"--compile needs the {' or '.join(map(repr, COMPILE_KERNELS))} linear kernel, not {kernel!r}")
    return kernel


class CompiledDecode:
    """torch.compile'd `BlockSpan.run_layers` for one-position, one-row steps over the whole span."""

    def __init__(self, span: BlockSpan):
        if span.device.type != "cpu":
            raise ValueError("--compile is supported on CPU only")
        import torch._dynamo

        self.span = span
        # each span (a rebalanced hoster loads a new one) adds its own ~3 graphs to the shared code object
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        self._fn = torch.compile(span.run_layers, dynamic=True)
        self.ready = False  # warmed up: from now on a new compilation is refused
        self.fallbacks = 0  # steps that would have needed a new compilation and ran eagerly instead
        self.steps = 0  # steps run compiled (observability, tests)
        self.busy = 0  # steps run eagerly because another thread held COMPILE_LOCK
        self.prepare_only = False  # warm_up compiles but leaves `ready` to the caller (hoster.compile_auto)

    def serves(self, hidden: torch.Tensor, kv, start: int, end: int) -> bool:
        """Whether this step takes the compiled path (lengths 0 and 1 would specialise the graph; the
        buffer keeps one spare position, so the step's view never covers all of it: see `warm_up`)."""
        return (self.ready and hidden.shape[0] == 1 and hidden.shape[1] == 1 and start == self.span.start
                and end == self.span.end and kv.length >= 2 and kv.length + SLACK <= kv.max_length)

    def __call__(self, hidden: torch.Tensor, cache, start: int, end: int) -> torch.Tensor | None:
        """The step's output, or None when it would need a new compilation (the caller runs it eagerly)."""
        if not COMPILE_LOCK.acquire(blocking=False):
            self.busy += 1  # another thread is compiling: its compilation would be refused (see COMPILE_LOCK)
            return None
        try:
            cache.kv.reserve(cache.kv.length + SLACK)  # a view of part of the buffer: the warmed-up graph
            with torch.inference_mode(), torch.compiler.set_stance("fail_on_recompile"), _no_duck_shapes():
                out = self._fn(_uniform(hidden), None, cache, None, start, end)
            self.steps += 1
            return out
        except RuntimeError as e:
            if not str(e).startswith(RECOMPILE_REFUSED):
                raise
            self.fallbacks += 1
            if self.fallbacks >= MAX_FALLBACKS:
                self.ready = False  # this span's steps keep missing the graph: stop paying the failed guard
            reason = next((ln.strip() for ln in str(e).splitlines() if ln.strip().startswith("- ")), "")
            event(log, "compiled_step_fallback", level=logging.WARNING, guard=reason[:200],
                  fallbacks=self.fallbacks, compiled_path="off" if not self.ready else "on")
            return None
        finally:
            COMPILE_LOCK.release()

    def run_unchecked(self, hidden: torch.Tensor, cache) -> torch.Tensor:
        """A whole-span step through the graph with no stance or counters (timing it: hoster.compile_auto)."""
        with torch.inference_mode(), _no_duck_shapes():
            return self._fn(_uniform(hidden), None, cache, None, self.span.start, self.span.end)

    def warm_up(self, new_kv, new_cache) -> float:
        """Compile for dynamic lengths and capacities (blocking, seconds taken); call before serving.

        `new_kv(max_length)` makes a one-row SessionKV, `new_cache(kv)` its transformers view.
        """
        t0 = time.perf_counter()
        event(log, "compile_started", blocks=f"{self.span.start}:{self.span.end}")
        kv = new_kv(4096)
        cache = new_cache(kv)
        gen = torch.Generator().manual_seed(0)

        def hidden(n: int) -> torch.Tensor:
            return torch.randn(1, n, self.span.hidden_size, generator=gen).to(self.span.device, self.span.dtype)

        kv.reserve(4)
        self.span(hidden(4), cache=cache)  # eager prefill: the compiled path starts at length >= 2
        # One graph for every length and capacity: every size is its own symbol (no "duck" sizing,
        # which would assume that a length equal to a capacity stays equal), and a step never views
        # its whole buffer (`SLACK`: a full-buffer view is another graph). Positions skipped hold
        # garbage, which is fine for compiling.
        for length, capacity in ((35, 48), (20, 40)):  # the second call checks the first graph covers it
            kv.reserve(capacity)  # before moving the length: growing copies [0, length)
            kv.length = length
            with torch.inference_mode(), _no_duck_shapes():
                self._fn(_uniform(hidden(1)), None, cache, None, self.span.start, self.span.end)
        if self.prepare_only:
            return time.perf_counter() - t0
        self.ready = True
        seconds = time.perf_counter() - t0
        event(log, "compile_done", blocks=f"{self.span.start}:{self.span.end}", seconds=round(seconds, 1))
        return seconds


def _no_duck_shapes():
    """Compile with one symbol per size (see `CompiledDecode.warm_up`)."""
    import torch.fx.experimental._config as fx_config

    return fx_config.patch(use_duck_shape=False)


def _uniform(hidden: torch.Tensor) -> torch.Tensor:
    """A contiguous inference-mode copy (call inside inference mode): requests' inputs, views of
    them and earlier outputs differ in dispatch keys and strides, which the graph's guards check."""
    return hidden.clone(memory_format=torch.contiguous_format)
