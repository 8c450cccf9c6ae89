"""Helpers shared by the API tests (a module with a unique name: no clash with other test dirs)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

MODEL = "tiny-llama"


@contextmanager
def live_server(app) -> Iterator[str]:
    """A real uvicorn server on 127.0.0.1 (ephemeral port) for the duration of the block."""
    from subnet.api.server import BackgroundServer

    with BackgroundServer(app) as server:
        yield server.url
