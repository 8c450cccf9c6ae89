"""Hoster test fixtures: reference outputs from the full local model, in-process hosters, a client peer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # hoster_rpc helper module


def reference_layers(model_path: str, hidden_in: torch.Tensor | None, k: int, n: int, ids: torch.Tensor):
    """(input of layer k, output of layer n-1) captured from the full transformers model's own forward."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    got: dict[str, torch.Tensor] = {}

    def pre(module, args, kwargs):
        got["in"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

    def post(module, args, output):
        got["out"] = (output[0] if isinstance(output, tuple) else output).detach().clone()

    h1 = model.model.layers[k].register_forward_pre_hook(pre, with_kwargs=True)
    h2 = model.model.layers[n - 1].register_forward_hook(post)
    with torch.no_grad():
        model(ids)
    h1.remove()
    h2.remove()
    return got["in"], got["out"]


@pytest.fixture(scope="module")
def client_dht_factory():
    """Start client-side DHT peers joined to given maddrs; all shut down after the module."""
    from hoster.server import start_dht_compat

    dhts = []

    def make(initial_peers):
        dht = start_dht_compat(None, list(initial_peers))
        dhts.append(dht)
        return dht

    yield make
    for d in dhts:
        d.shutdown()
