"""Fixtures shared by the API and node-command tests: one tiny long-context model in a
LocalTransformersBackend (loaded once per session), and live uvicorn apps over it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "api"))

from api_support import MODEL, live_server  # noqa: E402


@pytest.fixture(scope="session")
def long_llama(tiny_model_factory) -> str:
    """Tiny Llama with a long context, so a generation can run long enough to be interrupted."""
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
