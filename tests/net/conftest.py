"""Network-namespace fixtures: a lab of namespaces on a private bridge, always torn down."""

from __future__ import annotations

import pytest
from netlab import NetLab, netns_unavailable


@pytest.fixture
def lab():
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    net = NetLab()
    try:
        yield net
    finally:
        net.close()
