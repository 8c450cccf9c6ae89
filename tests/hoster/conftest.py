"""Hoster test fixtures: reference outputs from the full local model, in-process hosters, a client peer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # helper module: hoster_rpc


@pytest.fixture(scope="module")
def client_dht_factory():
    """Start client-side DHT peers joined to given maddrs; all shut down after the module."""
    from hoster.server import start_dht_compat

    dhts = []

    def make(initial_peers, **kwargs):
        dht = start_dht_compat(None, list(initial_peers), **kwargs)
        dhts.append(dht)
        return dht

    yield make
    for d in dhts:
        d.shutdown()
