"""Fixtures for the node's command tests: a tiny long-context model behind a live local API."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "api"))

from api_support import MODEL, live_server  # noqa: E402


@pytest.fixture(scope="session")
def long_llama(tiny_model_factory) -> str:
    """Tiny Llama with a long context (the same checkpoint the API tests use)."""
    return tiny_model_factory("llama", max_position_embeddings=65536)


@pytest.fixture(scope="session")
def local_backend(long_llama):
    from subnet.api.local_backend import LocalTransformersBackend

    backend = LocalTransformersBackend(long_llama, name=MODEL)
    yield backend
    backend.close()


@pytest.fixture
def serve():
    """Factory: serve(app) -> base URL; stopped after the test."""
    stack = []

    def start(app) -> str:
        cm = live_server(app)
        url = cm.__enter__()
        stack.append(cm)
        return url

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)
