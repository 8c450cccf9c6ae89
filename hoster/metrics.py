"""Prometheus metrics of one hoster, and the small HTTP endpoint a node process serves them on.

Two kinds of numbers:

- read at scrape time from state the hoster already keeps (sessions, KV budget, compute
  queue, open streams, served span): a `Collector`, nothing on the serving path;
- counted where requests pass: `instrument` wraps the servicer's `rpc_forward` and
  `rpc_inference` (and each backend's `step`) on the instance, before the handlers are
  registered, so outcomes, bytes and step latency are measured without touching the
  servicer's or backend's code.

Names follow Prometheus conventions (`mesh_hoster_*`, `_total`, `_seconds`, `_bytes`):

    mesh_hoster_sessions, mesh_hoster_open_streams, mesh_hoster_kv_tokens_used,
    mesh_hoster_kv_tokens_budget, mesh_hoster_kv_bytes, mesh_hoster_queue_depth,
    mesh_hoster_forward_queue_depth (when the compute queue has a separate forward lane),
    mesh_hoster_blocks_served, mesh_hoster_throughput_tokens_per_second, mesh_hoster_state{state},
    mesh_hoster_decode_path{path}, mesh_hoster_decode_threads, mesh_hoster_info{model,peer_id,start,end},
    mesh_hoster_batched_steps_total,
    mesh_hoster_batch_bucket{bucket,state}  (auto compile mode) each batched bucket: served | slower |
        compiling | failed | eager (not asked for yet) | off (compiled on demand: hoster/compile_auto.py),
    mesh_hoster_push_rejected_total, mesh_hoster_positions_computed_total,
    mesh_hoster_decode_rounds_total{sessions}  one-position step rounds by the sessions batched in them,
    mesh_hoster_compiled_steps_total{graph,outcome}  graph: one_session | bucket; outcome: compiled (served
        by the graph) | busy (eager: a compilation held the lock) | fallback (eager: not covered),
    mesh_hoster_prefix_{entries,tokens} (gauges),
    mesh_hoster_prefix_{hits,misses,evictions,stored,reused_positions}_total,
    mesh_hoster_requests_total{rpc,outcome}  rpc: forward | inference_open | inference_step;
                                              outcome: ok or the protocol error type (busy, bad_request...)
    mesh_hoster_received_bytes_total{rpc}, mesh_hoster_sent_bytes_total{rpc}  (protobuf message sizes)
    mesh_hoster_step_seconds{kind}  histogram of inference steps (kind: decode | prefill)
    mesh_hoster_forward_seconds     histogram of stateless forward requests
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from subnet.logs import event
from subnet.swarm import wire

log = logging.getLogger(__name__)

STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_STATES = ("joining", "online", "offline")


def _outcome(response: Any) -> str:
    err = wire.response_error(response)
    return "ok" if err is None else err[0][:32]


class _CountedRequests:
    """The request stream of one `rpc_inference` call, counting bytes as they are read.

    A plain `__anext__` delegate (no generator frame of its own): cancelling a pending read
    behaves exactly as on the stream hivemind hands the servicer.
    """

    def __init__(self, requests: Any, counter: Any):
        self._it = requests.__aiter__()
        self._counter = counter

    def __aiter__(self):
        return self

    async def __anext__(self):
        request = await self._it.__anext__()
        self._counter.inc(request.ByteSize())
        return request


class _HosterState(Collector):
    """Gauges read from the running hoster at scrape time."""

    def __init__(self, hoster: Any):
        self.hoster = hoster

    def collect(self):
        h = self.hoster
        backend, servicer = getattr(h, "backend", None), getattr(h, "servicer", None)
        state = GaugeMetricFamily("mesh_hoster_state", "1 for the hoster's current state", labels=["state"])
        for s in _STATES:
            state.add_metric([s], 1 if getattr(h, "state", None) == s else 0)
        yield state
        if backend is None:
            return
        info = GaugeMetricFamily("mesh_hoster_info", "the served model and span (value 1)",
                                 labels=["model", "peer_id", "start", "end"])
        info.add_metric([str(h.model_uid), str(h.peer_id), str(backend.start), str(backend.end)], 1)
        yield info
        sessions = list(getattr(backend, "sessions", {}).values())
        yield _gauge("mesh_hoster_sessions", "open inference sessions", len(sessions))
        yield _gauge("mesh_hoster_blocks_served", "blocks in the served span", backend.end - backend.start)
        yield _gauge("mesh_hoster_throughput_tokens_per_second", "announced decode throughput",
                     float(getattr(h, "throughput", 0.0) or 0.0))
        path = GaugeMetricFamily("mesh_hoster_decode_path", "1 for how one-session decode steps run "
                                 "(hoster/compile_auto.py)", labels=["path"])
        for p in ("eager", "compiling", "compiled"):
            path.add_metric([p], 1 if getattr(backend, "decode_path", "eager") == p else 0)
        yield path
        threads = getattr(backend, "threads", None)
        if threads is not None:
            yield _gauge("mesh_hoster_decode_threads", "intra-op threads of small (decode) steps "
                         "(hoster/decode_threads.py)", threads.announced)
        auto = getattr(backend, "auto", None)
        if auto is not None:  # batched buckets, compiled on demand (hoster/compile_auto.py)
            buckets = GaugeMetricFamily("mesh_hoster_batch_bucket", "1 for each batched bucket's state: served, "
                                        "slower, compiling, failed, eager (not asked for yet), off",
                                        labels=["bucket", "state"])
            for bucket, state in auto.bucket_states().items():
                for st in ("served", "slower", "compiling", "failed", "eager", "off"):
                    buckets.add_metric([str(bucket), st], 1 if state == st else 0)
            yield buckets
        kv_bytes = 0
        for s in sessions:
            try:
                kv_bytes += s.cache_bytes()
            except Exception:  # a session closing on the compute thread right now
                pass
        yield _gauge("mesh_hoster_kv_bytes", "bytes of K/V buffers held by open sessions", kv_bytes)
        budget = getattr(backend, "budget", None)
        if budget is not None:
            yield _gauge("mesh_hoster_kv_tokens_used", "KV cache tokens charged to sessions", budget.used_tokens)
            yield _gauge("mesh_hoster_kv_tokens_budget", "KV cache budget in tokens", budget.total_tokens)
        depth = _queue_depth(backend)
        if depth is not None:
            yield _gauge("mesh_hoster_queue_depth", "tasks waiting for the compute thread", depth)
        forwards = getattr(getattr(backend, "_queue", None), "forwards_waiting", None)  # a scheduler's forward lane
        if callable(forwards):
            yield _gauge("mesh_hoster_forward_queue_depth", "forward requests waiting", forwards())
        c = CounterMetricFamily("mesh_hoster_batched_steps", "multi-session batched steps run by the current span")
        c.add_metric([], getattr(backend, "batches_run", 0))
        yield c
        yield from _step_path_metrics(backend)
        yield from _prefix_metrics(backend)
        if servicer is not None:
            yield _gauge("mesh_hoster_open_streams", "open inference streams", getattr(servicer, "open_streams", 0))
            inbox = getattr(servicer, "inbox", None)
            if inbox is not None:
                c = CounterMetricFamily("mesh_hoster_push_rejected", "pushed inputs rejected")
                c.add_metric([], getattr(inbox, "rejected", 0))
                yield c


def parse_samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a /metrics page: what benchmarks and tests read back."""
    from prometheus_client.parser import text_string_to_metric_families  # deferred: only readers parse

    return {(smp.name, tuple(sorted(smp.labels.items()))): smp.value
            for fam in text_string_to_metric_families(text) for smp in fam.samples}


def _step_path_metrics(backend: Any):
    """How decode steps ran: rounds by batch size, and what the compiled graphs served (hoster.compile_auto):
    the numbers that say whether concurrent sessions really batch and take the compiled buckets."""
    c = CounterMetricFamily("mesh_hoster_decode_rounds", "one-position step rounds by sessions batched in them",
                            labels=["sessions"])
    for n, count in sorted(dict(getattr(backend, "decode_rounds", {})).items()):
        c.add_metric([str(n)], count)
    yield c
    auto = getattr(backend, "auto", None)
    graphs = {"one_session": getattr(backend, "compiled", None), "bucket": getattr(auto, "batches", None)}
    c = CounterMetricFamily("mesh_hoster_compiled_steps", "decode steps by compiled graph and outcome",
                            labels=["graph", "outcome"])
    for graph, g in graphs.items():
        if g is not None:
            for outcome, attr in (("compiled", "steps"), ("busy", "busy"), ("fallback", "fallbacks")):
                c.add_metric([graph, outcome], getattr(g, attr, 0))
    yield c


def _prefix_metrics(backend: Any):
    """Positions computed by inference steps and the prefix cache's state (hoster.prefix_cache)."""
    c = CounterMetricFamily("mesh_hoster_positions_computed", "rows x positions run by inference steps")
    c.add_metric([], getattr(backend, "positions_computed", 0))
    yield c
    prefix = getattr(backend, "prefix", None)
    if prefix is None:
        return
    st = prefix.stats()
    yield _gauge("mesh_hoster_prefix_entries", "closed sessions' KV kept for reuse", st["entries"])
    yield _gauge("mesh_hoster_prefix_tokens", "KV tokens held by the prefix cache", st["tokens"])
    for name, doc in (("hits", "opens that forked a cached prefix"), ("misses", "opens offering a prefix, no hit"),
                      ("evictions", "cached prefixes evicted"), ("stored", "closed sessions kept"),
                      ("reused_positions", "positions forks did not compute")):
        c = CounterMetricFamily(f"mesh_hoster_prefix_{name}", doc)
        c.add_metric([], st[name])
        yield c


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    g.add_metric([], value)
    return g


def _queue_depth(backend: Any) -> int | None:
    q = getattr(backend, "_queue", None)  # the compute thread's task queue (read only)
    if q is None:
        return None
    try:
        return int(q.qsize())
    except Exception:
        try:
            return len(q)
        except Exception:
            return None


class HosterMetrics:
    """The hoster's metrics in `registry` (a node passes its one registry; default: a new one)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = r = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.requests = Counter("mesh_hoster_requests", "hoster RPC requests by outcome", ["rpc", "outcome"],
                                registry=r)
        self.received = Counter("mesh_hoster_received_bytes", "bytes of RPC requests received", ["rpc"], registry=r)
        self.sent = Counter("mesh_hoster_sent_bytes", "bytes of RPC responses sent", ["rpc"], registry=r)
        self.step_seconds = Histogram("mesh_hoster_step_seconds", "inference step latency (queue + compute)",
                                      ["kind"], buckets=STEP_BUCKETS, registry=r)
        self.forward_seconds = Histogram("mesh_hoster_forward_seconds", "stateless forward request latency",
                                         buckets=STEP_BUCKETS, registry=r)
        for kind in ("decode", "prefill"):  # exported from the start (a labelled series appears at first use)
            self.step_seconds.labels(kind)
        for rpc in ("forward", "inference_open", "inference_step"):
            self.requests.labels(rpc, "ok")
        for rpc in ("forward", "inference"):
            self.received.labels(rpc), self.sent.labels(rpc)
        self._hoster: Any = None

    def attach(self, hoster: Any) -> HosterMetrics:
        """Measure `hoster` (call before `hoster.start()`): its state at scrape time, its RPCs as they pass."""
        if self._hoster is not None:
            raise ValueError("these metrics already describe a hoster")
        self._hoster = hoster
        self.registry.register(_HosterState(hoster))
        hoster.servicer_hooks.append(self.instrument)  # runs once the servicer exists, before it serves
        return self

    def instrument(self, servicer: Any) -> None:
        """Wrap the servicer's RPC handlers on the instance (hivemind registers `getattr(servicer, name)`)."""
        forward, inference = servicer.rpc_forward, servicer.rpc_inference
        requests, received, sent = self.requests, self.received, self.sent

        async def rpc_forward(request, context):
            t0 = time.perf_counter()
            received.labels("forward").inc(request.ByteSize())
            response = await forward(request, context)
            outcome = _outcome(response)
            requests.labels("forward", outcome).inc()
            sent.labels("forward").inc(response.ByteSize())
            if outcome == "ok":
                self.forward_seconds.observe(time.perf_counter() - t0)
            return response

        async def rpc_inference(stream, context):
            self._time_steps(servicer.backend)  # a rebalanced hoster has a new backend
            rpc = "inference_open"
            responses = inference(_CountedRequests(stream, received.labels("inference")), context)
            try:
                async for response in responses:
                    requests.labels(rpc, _outcome(response)).inc()
                    sent.labels("inference").inc(response.ByteSize())
                    rpc = "inference_step"
                    yield response
            finally:
                await responses.aclose()  # the servicer's own cleanup runs now, not at garbage collection

        # hivemind reads the stream flags from the class's annotations, the callable from the instance
        servicer.rpc_forward, servicer.rpc_inference = rpc_forward, rpc_inference

    def _time_steps(self, backend: Any) -> None:
        if backend is None or getattr(backend, "_mesh_step_timed", False):
            return
        step = backend.step
        hist = self.step_seconds

        async def timed_step(session, hidden, position):
            t0 = time.perf_counter()
            out = await step(session, hidden, position)
            hist.labels("decode" if hidden.shape[1] == 1 else "prefill").observe(time.perf_counter() - t0)
            return out

        backend.step = timed_step
        backend._mesh_step_timed = True


class MetricsServer:
    """`/metrics` of `registry` over HTTP (prometheus_client's own server, a daemon thread)."""

    def __init__(self, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0):
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        self.host, self.port = host, int(self._server.server_port)
        event(log, "metrics_serving", url=self.url)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
