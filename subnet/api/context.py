"""Everything the routes of one app share (backend, view, limits, metrics)."""

from __future__ import annotations

from dataclasses import dataclass, field

from subnet.api.backends import GenerationBackend, SubnetView
from subnet.api.limits import StreamLimiter
from subnet.api.metrics import ApiMetrics


@dataclass
class ApiContext:
    backend: GenerationBackend
    subnet_view: SubnetView | None
    api_keys: frozenset[str]
    limiter: StreamLimiter
    metrics: ApiMetrics
    max_prompt_tokens: int
    max_tokens_limit: int
    retry_after: int = 1
    fingerprint: str = "mesh-node"
    extra: dict = field(default_factory=dict)
