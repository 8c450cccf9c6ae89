"""`mesh-node api --chain URL --subnet-id N` routes only to hosters registered on that chain, like
`mesh-node --api` nodes: an unregistered peer's announcement in the same DHT is never offered."""

from __future__ import annotations

import argparse

import pytest
from api_support import MODEL, Proposer
from conftest import LiveSubnet, _announce

from subnet.node.commands import api as api_command


@pytest.fixture(scope="module")
def subnet_with_outsider(tmp_path_factory):
    """The live subnet's two registered hosters, plus an outsider announcing the whole model."""
    from keys import NodeKey
    from subnet.swarm.dht import start_dht

    subnet = LiveSubnet(tmp_path_factory.mktemp("api-registry"), MODEL)
    proposer = None
    try:
        proposer = Proposer(subnet)  # epochs keep being accepted, so the nodes stay registered and serving
        outsider = NodeKey.generate()
        subnet.dhts.append(start_dht(outsider, subnet.initial_peers, check_if_identity_free=False))
        _announce(subnet.dhts[-1], outsider, MODEL, 0, 8, 8)
        yield subnet, outsider.peer_id
    finally:
        if proposer is not None:
            proposer.close()
        subnet.close()


def _backend(tiny_llama, subnet, chain: bool):
    parser = argparse.ArgumentParser()
    api_command.add_arguments(parser)
    argv = ["--model", tiny_llama, "--model-name", MODEL, "--initial-peers", *subnet.initial_peers]
    if chain:
        argv += ["--chain", subnet.url, "--subnet-id", str(subnet.subnet_id)]
    args = parser.parse_args(argv)
    for key, value in api_command.DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    backend, _dht = api_command.build_backend(args)
    return backend


def _announced(backend) -> set[str]:
    (model,) = backend._models.values()
    return {s.peer_id for s in model.runtime.run(model.manager.servers(force=True), timeout=30)}


def test_api_with_chain_ignores_unregistered_hosters(subnet_with_outsider, tiny_llama):
    subnet, outsider = subnet_with_outsider
    registered = {k.peer_id for k in subnet.node_keys[:2]}
    without = _backend(tiny_llama, subnet, chain=False)
    try:  # the outsider's announcement is really there: a chain-less client reads it
        assert _announced(without) == registered | {outsider}
    finally:
        without.close()
    backend = _backend(tiny_llama, subnet, chain=True)
    try:
        assert _announced(backend) == registered
    finally:
        backend.close()
