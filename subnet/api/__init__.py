"""The node's HTTP face: OpenAI-compatible API, subnet views, Prometheus metrics, dashboard.

`create_app(backend, subnet_view)` builds the FastAPI app; backends and views are the
small protocols in `subnet.api.backends`.
"""

from subnet.api.app import create_app
from subnet.api.backends import (
    BackendError,
    BlockCoverage,
    EpochView,
    GenerationBackend,
    GenerationParams,
    ModelCard,
    NodeView,
    RewardView,
    SubnetView,
    TokenEvent,
)

__all__ = [
    "BackendError",
    "BlockCoverage",
    "EpochView",
    "GenerationBackend",
    "GenerationParams",
    "ModelCard",
    "NodeView",
    "RewardView",
    "SubnetView",
    "TokenEvent",
    "create_app",
]
