"""A hoster whose announced address nobody can dial (a wrong --announce-maddrs, a closed port) costs
the client a quick failed dial, not a hang: it routes around it well within the request timeout and
generates the same greedy tokens as local transformers."""

from __future__ import annotations

import os
import socket
import tempfile
import time

import pytest
import torch

from subnet.node.procs import ManagedProcess, python_module_argv, stop_all

NEW_TOKENS = 4
PROMPT = [3, 8, 2, 11]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens here once the socket closes


@pytest.mark.slow
def test_client_routes_around_an_unreachable_announced_address(tiny_llama):
    from transformers import AutoModelForCausalLM

    from subnet.client import DistributedModelForCausalLM
    from subnet.swarm.dht import start_dht, visible_maddrs

    bootstrap = start_dht()
    logdir = tempfile.mkdtemp(prefix="mesh-unreachable-")
    procs: list[ManagedProcess] = []
    model = None
    try:
        peers = visible_maddrs(bootstrap)
        for name, extra in (("liar", ["--throughput", "1000", "--host-maddrs", "/ip4/127.0.0.1/tcp/0",
                                      "--announce-maddrs", f"/ip4/127.0.0.1/tcp/{closed_port()}"]),
                            ("good", ["--throughput", "10", "--host-maddrs", "/ip4/127.0.0.1/tcp/0"])):
            argv = python_module_argv("hoster", "--model", tiny_llama, "--blocks", "0:8", "--initial-peers", *peers,
                                      "--no-progress", "--log-level", "WARNING", "--announce-period", "2", *extra)
            procs.append(ManagedProcess(name, argv, log_path=os.path.join(logdir, f"{name}.log"),
                                        env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}))
        liar_id = procs[0].wait_ready(240).split()[1]
        procs[1].wait_ready(240)
        model = DistributedModelForCausalLM.from_pretrained(tiny_llama, initial_peers=peers)
        model.wait_until_servable(60)
        t0 = time.monotonic()
        out = model.generate(torch.tensor([PROMPT]), max_new_tokens=NEW_TOKENS, do_sample=False)
        elapsed = time.monotonic() - t0
        ref = AutoModelForCausalLM.from_pretrained(tiny_llama, torch_dtype=torch.float32).generate(
            torch.tensor([PROMPT]), max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
        assert out[0].tolist() == ref[0].tolist()
        assert elapsed < model.manager.config.request_timeout, elapsed
        assert model.manager.bans._failures.get(liar_id, 0) >= 1  # tried (it claimed the most), failed, banned
    finally:
        if model is not None:
            model.close()
        stop_all(procs)
        bootstrap.shutdown()
