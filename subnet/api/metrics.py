"""Prometheus metrics of one API app (own registry, so several apps can live in one process).

API-side counters come from the routes; subnet gauges (coverage, cache, epoch outcomes)
are read from the `SubnetView` at scrape time. A node passes its one registry, so the API's
`/metrics` also shows the node's hoster and validator metrics (hoster/metrics.py,
validator/metrics.py). `TimedBackend` measures at the backend's stream: the gap between
consecutive tokens (`mesh_api_time_per_output_token_seconds`) and how streams end
(`mesh_api_backend_streams_total{outcome}`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter as _Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from subnet.api.backends import BackendError, GenerationBackend, GenerationParams, SubnetView, TokenEvent

log = logging.getLogger(__name__)


class _SubnetCollector(Collector):
    def __init__(self, view: SubnetView):
        self.view = view

    def collect(self):
        try:
            nodes = self.view.nodes()
            coverage = self.view.coverage()
            epochs = self.view.epochs(limit=50)
            summary = self.view.summary()
        except Exception as e:  # a scrape must not fail because the chain is briefly away
            log.warning("subnet metrics unavailable: %s", e)
            up = GaugeMetricFamily("mesh_subnet_view_up", "1 if the subnet view answered")
            up.add_metric([], 0)
            yield up
            return
        up = GaugeMetricFamily("mesh_subnet_view_up", "1 if the subnet view answered")
        up.add_metric([], 1)
        yield up
        if summary.get("epoch") is not None:
            g = GaugeMetricFamily("mesh_subnet_epoch", "current chain epoch of the subnet")
            g.add_metric([], summary["epoch"])
            yield g
        by_class = _Counter(n.node_class for n in nodes)
        g = GaugeMetricFamily("mesh_subnet_nodes", "subnet nodes by class", labels=["node_class"])
        for cls, count in sorted(by_class.items()):
            g.add_metric([cls], count)
        yield g
        free = GaugeMetricFamily("mesh_subnet_cache_tokens_free", "announced free KV cache tokens", labels=["model"])
        total = GaugeMetricFamily("mesh_subnet_cache_tokens_total", "announced KV cache tokens", labels=["model"])
        complete = GaugeMetricFamily("mesh_subnet_model_servable", "1 if hosters cover every block", labels=["model"])
        for c in coverage:
            free.add_metric([c.model], c.cache_tokens_free)
            total.add_metric([c.model], c.cache_tokens_total)
            complete.add_metric([c.model], 1 if c.complete else 0)
        yield free
        yield total
        yield complete
        outcomes = GaugeMetricFamily("mesh_subnet_epoch_outcomes", "recent epochs by outcome", labels=["outcome"])
        for outcome, count in sorted(_Counter(e.outcome for e in epochs).items()):
            outcomes.add_metric([outcome], count)
        yield outcomes
        decided = [e for e in epochs if e.attestation_ratio is not None]
        if decided:
            last = max(decided, key=lambda e: e.epoch)
            g = GaugeMetricFamily("mesh_subnet_attestation_ratio", "attestation ratio of the latest proposal")
            g.add_metric([], last.attestation_ratio)
            yield g


class ApiMetrics:
    def __init__(self, subnet_view: SubnetView | None = None, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("mesh_api_requests", "HTTP API requests", ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("mesh_api_prompt_tokens", "prompt tokens processed", ["model"], registry=r)
        self.completion_tokens = Counter("mesh_api_completion_tokens", "tokens generated", ["model"], registry=r)
        self.sessions = Counter("mesh_api_generation_sessions", "generation sessions started", ["model"], registry=r)
        self.cancelled = Counter("mesh_api_generations_cancelled", "generations stopped by a client disconnect",
                                 registry=r)
        self.rejected = Counter("mesh_api_rejected", "requests rejected by limits", ["reason"], registry=r)
        self.active = Gauge("mesh_api_active_generations", "generation requests in progress", registry=r)
        self.max_active = Gauge("mesh_api_max_concurrent_generations", "concurrency limit (more get 429)",
                                registry=r)
        self.per_token = Histogram(
            "mesh_api_time_per_output_token_seconds", "gap between consecutive generated tokens", registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.streams = Counter("mesh_api_backend_streams", "backend generation streams by how they ended",
                               ["outcome"], registry=r)  # finished | error | closed (disconnect, stop string)
        self.ttft = Histogram("mesh_api_time_to_first_token_seconds", "time to first token", registry=r,
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.tokens_per_second = Histogram(
            "mesh_api_tokens_per_second", "decode rate per generation (tokens/s after the first token)", registry=r,
            buckets=(0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
        if subnet_view is not None:
            r.register(_SubnetCollector(subnet_view))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class TimedBackend:
    """`backend` with its token streams timed; everything else is the backend's own (attributes too)."""

    def __init__(self, backend: GenerationBackend, metrics: ApiMetrics):
        self._backend = backend
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def models(self):
        return self._backend.models()

    def tokenizer(self, model: str) -> Any:
        return self._backend.tokenizer(model)

    async def stream(self, model: str, prompt_ids: Sequence[int],
                     params: GenerationParams) -> AsyncIterator[TokenEvent]:
        events = self._backend.stream(model, prompt_ids, params)
        last: float | None = None
        outcome = "closed"
        try:
            async for ev in events:
                if ev.token_id is not None:
                    now = time.monotonic()
                    if last is not None:
                        self._metrics.per_token.observe(now - last)
                    last = now
                if ev.finish_reason:
                    outcome = "finished"
                yield ev
            outcome = "finished"
        except BackendError:
            outcome = "error"
            raise
        finally:
            self._metrics.streams.labels(outcome).inc()
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()
