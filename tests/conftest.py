"""Shared fixtures: tiny random-weight checkpoints and real hivemind DHT swarms on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Serving nodes listen on every interface by default and announce those addresses; tests must only
# ever talk over 127.0.0.1 (or namespaces they create, whose nodes pass --host-maddrs explicitly).
# `mesh-node` and `python -m hoster` both read this default from the environment.
os.environ.setdefault("MESH_NODE_HOST_MADDRS", "/ip4/127.0.0.1/tcp/0")
# Hosters compile their decode step in the background by default (hoster/compile_auto.py): tests pin the
# eager path, so a compiler never competes with the suite for the cores; tests of the default set "auto".
os.environ.setdefault("MESH_NODE_COMPILE", "off")
# Node processes (`python -m hoster`, `python -m subnet.node.cli`) fork from a template that imported torch,
# transformers and hivemind once (subnet/node/forkserver.py): ~2.5 s of CPU saved per node, ~400 nodes a run.
os.environ.setdefault("MESH_NODE_FORKSERVER", "1")


class _WithFields:
    """pytest's own log line plus the event's `key=value` fields (subnet.logs.event): a failed test's
    "Captured log" then says which hoster failed and why, not only `hoster_failed`."""

    def __init__(self, base) -> None:
        self.base = base

    def format(self, record) -> str:
        fields = getattr(record, "fields", None) or {}
        return self.base.format(record) + "".join(f" {k}={v}" for k, v in fields.items())

    def __getattr__(self, name):
        return getattr(self.base, name)


@pytest.hookimpl(trylast=True)
def pytest_configure(config) -> None:
    plugin = config.pluginmanager.get_plugin("logging-plugin")
    for handler in (getattr(plugin, "caplog_handler", None), getattr(plugin, "report_handler", None)):
        if handler is not None and handler.formatter is not None:
            handler.setFormatter(_WithFields(handler.formatter))


def pytest_collection_modifyitems(config, items) -> None:
    """With xdist workers, hand out the modules marked `long` first, then those holding slow tests,
    so the longest ones run side by side at the start instead of forming a tail at the end. The sort
    is stable: tests keep their order inside a module (a random order stays random)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # workers collect (the controller only hands out)
        return
    long = {item.path for item in items if item.get_closest_marker("long")}
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: (item.path not in long, item.path not in slow))


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory) -> Callable[..., str]:
    """Build (once per distinct argument set) a tiny checkpoint dir; returns its path."""
    from subnet.model.tiny_model import make_tiny_model

    cache: dict[tuple, str] = {}

    def make(arch: str = "llama", **kwargs) -> str:
        key = (arch, tuple(sorted(kwargs.items())))
        if key not in cache:
            d = tmp_path_factory.mktemp(f"tiny-{arch}")
            cache[key] = str(make_tiny_model(d, arch, **kwargs))
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_llama(tiny_model_factory) -> str:
    """8-layer Llama, hidden 64, GQA (4 heads / 2 kv heads)."""
    return tiny_model_factory("llama")


@pytest.fixture(scope="session")
def tiny_qwen3(tiny_model_factory) -> str:
    """8-layer Qwen3, hidden 64, GQA."""
    return tiny_model_factory("qwen3")


@pytest.fixture(params=["llama", "qwen3"])
def tiny_model(request, tiny_model_factory) -> str:
    return tiny_model_factory(request.param)


class Swarm:
    """N real hivemind DHT peers on 127.0.0.1 with known node keys."""

    def __init__(self, n: int):
        from keys import NodeKey
        from subnet.swarm.dht import start_dht, visible_maddrs

        self.keys = [NodeKey.generate() for _ in range(n)]
        self.dhts = []
        try:
            first = start_dht(self.keys[0])
            self.dhts.append(first)
            self.initial_peers = visible_maddrs(first)
            for key in self.keys[1:]:
                self.dhts.append(start_dht(key, self.initial_peers))
        except BaseException:
            self.shutdown()
            raise

    def shutdown(self) -> None:
        for dht in self.dhts:
            try:
                dht.shutdown()
            except Exception:
                pass
        self.dhts.clear()


@pytest.fixture
def dht_swarm() -> Iterator[Callable[[int], Swarm]]:
    """Factory: `dht_swarm(n)` starts n peers; all are shut down after the test."""
    swarms: list[Swarm] = []

    def start(n: int = 2) -> Swarm:
        swarm = Swarm(n)
        swarms.append(swarm)
        return swarm

    yield start
    for s in swarms:
        s.shutdown()
