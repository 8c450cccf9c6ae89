"""Failover without a visible stall: a hoster killed -9 or frozen (SIGSTOP) mid-generation is
noticed within seconds (closed connection: at once; frozen: the per-step deadline derived from
its measured step time plus a liveness probe), not after the 30 s request timeout.

The client runs with the default `ClientConfig` (request_timeout 30 s), three hosters per span
([0:4) and [4:8)), steps forwarded hoster to hoster. Each test checks that the tokens equal
the fault-free run's and that no two tokens are more than MAX_GAP seconds apart.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from subnet.client import DistributedModelForCausalLM

pytestmark = pytest.mark.slow

NEW_TOKENS = 30
KILL_AT = 8
MAX_GAP = 5.0  # generous for a loaded CI machine; benchmarks/faults.py measures the real distribution


def frozen_gap_bound(model, peer_id: str) -> float:
    """The longest stall a frozen hoster may cause: its step deadline (factor x its measured step
    time, so it grows with the machine's load: a stress run at load 12 stalled 8.1 s on a 2-core
    machine), the liveness probe, and twice as much again for the new route and its replay, plus slack;
    never less than MAX_GAP, and always well below the 30 s request timeout the stall would last
    without per-step deadlines (so the test still fails without them)."""
    cfg = model.manager.config
    deadline = model.manager.step_times.deadline(peer_id, 1, cfg.request_timeout) or cfg.request_timeout
    return min(max(MAX_GAP, 3 * (deadline + cfg.probe_timeout) + 3.0), 0.75 * cfg.request_timeout)
SPANS = [(0, 4), (0, 4), (0, 4), (4, 8), (4, 8), (4, 8)]  # each test takes one of a span


@pytest.fixture(scope="module")
def swarm(swarm_factory, tiny_llama):
    s = swarm_factory()
    hosters = {h.peer_id: h for h in s.start_hosters(tiny_llama, SPANS, "--announce-ttl", "8")}
    model = DistributedModelForCausalLM.from_pretrained(tiny_llama, initial_peers=s.initial_peers)
    try:
        deadline = time.monotonic() + 120
        while {a.peer_id for a in model.runtime.run(model.manager.servers(force=True), timeout=60)} != set(hosters):
            assert time.monotonic() < deadline, "the client does not see every hoster"
            time.sleep(0.5)  # poll: announcements reach the DHT on the hosters' clock
        ids = _prompt(model)
        baseline, _ = _run(model, ids)
        assert len(baseline) == NEW_TOKENS
        yield model, hosters, ids, baseline
    finally:
        model.close()


def _prompt(model):
    return model.tokenizer("Validators post probes, hosters commit and reveal, and the chain pays",
                           return_tensors="pt")["input_ids"]


def _run(model, ids, fault=None):
    """Greedy tokens and the longest gap between two of them; `fault(route)` runs after token KILL_AT."""
    tokens, times = [], []
    for i, ev in enumerate(model.stream(ids, max_new_tokens=NEW_TOKENS, ignore_eos=True)):
        tokens.append(ev.token_id)
        times.append(time.monotonic())
        if i == KILL_AT and fault is not None:
            (route,) = model.active_routes()
            fault(route)
    return tokens, max(b - a for a, b in zip(times, times[1:]))


def test_frozen_hoster_is_replaced_without_a_stall(swarm):
    model, hosters, ids, baseline = swarm
    frozen, bounds = [], []

    def freeze_first(route):
        frozen.append(route[0].peer_id)
        bounds.append(frozen_gap_bound(model, route[0].peer_id))
        os.killpg(hosters[route[0].peer_id].proc.proc.pid, signal.SIGSTOP)  # connection open, nothing answers

    try:
        tokens, gap = _run(model, ids, freeze_first)
    finally:
        for peer in frozen:
            hosters[peer].kill()  # SIGKILL also ends stopped processes
    assert frozen and tokens == baseline
    assert gap < bounds[0], f"the stream stalled {gap:.1f}s on the frozen hoster (bound {bounds[0]:.1f}s)"


@pytest.mark.parametrize("victim", [0, 1], ids=["first", "push-target"])
def test_killed_hoster_is_replaced_without_a_stall(swarm, victim):
    model, hosters, ids, baseline = swarm
    victims = []

    def kill(route):
        assert [(s.start, s.end) for s in route] == [(0, 4), (4, 8)]
        victims.append(route[victim].peer_id)
        hosters[route[victim].peer_id].kill()  # the whole process group: a machine dying

    tokens, gap = _run(model, ids, kill)
    assert victims and tokens == baseline
    assert gap < MAX_GAP, f"the stream stalled {gap:.1f}s after the hoster died"
