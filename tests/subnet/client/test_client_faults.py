"""Hosters killed mid-generation (SIGKILL of the whole process group): the client re-routes,
replays the span's history to the replacement and produces exactly the uninterrupted tokens.

Swarm: Z serves [0:8); X1, X2, X3 serve [0:4); Y1, Y2 serve [4:8). The tests run in order and
each kills (or freezes) one more hoster, until blocks 4..8 have nobody left and the client
must fail fast.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from subnet.client import DistributedModelForCausalLM, SessionError, Span

pytestmark = pytest.mark.slow

NEW_TOKENS = 40


@pytest.fixture(scope="module")
def fault_swarm(swarm_factory, tiny_llama):
    swarm = swarm_factory()
    swarm.start_hosters_async(tiny_llama, [(0, 8), (0, 4), (0, 4), (0, 4), (4, 8), (4, 8)])
    hosters = swarm.wait_all()
    model = DistributedModelForCausalLM.from_pretrained(
        tiny_llama, initial_peers=swarm.initial_peers, request_timeout=5.0, connect_timeout=5.0,
        hop_penalty=1.0)  # fewer hops always win: the whole-model hoster first, deterministically
    try:
        deadline = time.monotonic() + 60
        while len(_announced(model)) < len(hosters):  # every hoster visible before the baseline runs
            assert time.monotonic() < deadline, "hosters did not all appear in the DHT"
            time.sleep(0.5)
        yield swarm, {h.peer_id: h for h in hosters}, model
    finally:
        model.close()
        swarm.shutdown()


def _announced(model) -> list:
    return model.runtime.run(model.manager.servers(force=True), timeout=30)


def _prompt(model, long: bool) -> torch.Tensor:
    text = "Validators post probes, hosters commit and reveal, and the chain pays rewards."
    ids = model.tokenizer(" ".join([text] * (15 if long else 1)), return_tensors="pt")["input_ids"]
    assert ids.shape[1] > (200 if long else 10)
    return ids


def _run(model, ids, kill_at=None, choose=None, hosters=None, freeze=False) -> tuple[list[int], list[Span], list[Span]]:
    """Stream NEW_TOKENS greedy tokens; after token `kill_at`, SIGKILL the hoster `choose(route)` names."""
    tokens, before, after = [], [], []
    for i, ev in enumerate(model.stream(ids, max_new_tokens=NEW_TOKENS, ignore_eos=True)):
        tokens.append(ev.token_id)
        if i == kill_at:
            (before,) = model.active_routes()
            victim = choose(before)
            if freeze:
                os.killpg(hosters[victim].proc.proc.pid, signal.SIGSTOP)
            else:
                hosters[victim].kill()
        elif kill_at is not None and i == kill_at + 1:
            (after,) = model.active_routes()
    return tokens, before, after


@pytest.fixture(scope="module")
def baselines(fault_swarm):
    _, _, model = fault_swarm
    return {long: _run(model, _prompt(model, long))[0] for long in (False, True)}


def test_baseline_uses_whole_model_hoster(fault_swarm, baselines):
    swarm, hosters, model = fault_swarm
    ids = _prompt(model, False)
    with model.inference_session(ids.shape[1] + 4) as session:
        route = session.route
    assert len(route) == 1 and (route[0].start, route[0].end) == (0, 8)
    assert hosters[route[0].peer_id].blocks == (0, 8)
    assert len(baselines[False]) == len(baselines[True]) == NEW_TOKENS


def test_kill_whole_model_hoster_splits_span(fault_swarm, baselines):
    _, hosters, model = fault_swarm
    ids = _prompt(model, True)
    tokens, before, after = _run(model, ids, kill_at=5, choose=lambda r: r[0].peer_id, hosters=hosters)
    assert [(s.start, s.end) for s in before] == [(0, 8)]
    assert [(s.start, s.end) for s in after] == [(0, 4), (4, 8)]
    assert tokens == baselines[True]


def test_kill_redundant_second_span(fault_swarm, baselines):
    _, hosters, model = fault_swarm
    ids = _prompt(model, False)
    tokens, before, after = _run(model, ids, kill_at=12, choose=lambda r: r[1].peer_id, hosters=hosters)
    assert before[1].peer_id != after[1].peer_id and before[0] == after[0]
    assert tokens == baselines[False]


def test_kill_redundant_first_span(fault_swarm, baselines):
    _, hosters, model = fault_swarm
    ids = _prompt(model, True)
    tokens, before, after = _run(model, ids, kill_at=20, choose=lambda r: r[0].peer_id, hosters=hosters)
    assert before[0].peer_id != after[0].peer_id and before[1] == after[1]
    assert tokens == baselines[True]


def test_frozen_hoster_times_out_and_is_replaced(fault_swarm, baselines):
    """SIGSTOP: the connection stays open but nothing answers; the step timeout must fire."""
    _, hosters, model = fault_swarm
    ids = _prompt(model, False)
    frozen: list[str] = []

    def choose(route):
        frozen.append(route[0].peer_id)
        return route[0].peer_id

    t0 = time.monotonic()
    try:
        tokens, before, after = _run(model, ids, kill_at=8, choose=choose, hosters=hosters, freeze=True)
    finally:
        for peer in frozen:
            hosters[peer].kill()  # SIGKILL also ends stopped processes
    assert after[0].peer_id != frozen[0] and before[1] == after[1]
    assert tokens == baselines[False]
    assert time.monotonic() - t0 < 30


def test_losing_the_last_hoster_of_a_span_fails_fast(fault_swarm):
    _, hosters, model = fault_swarm
    ids = _prompt(model, False)
    t0 = time.monotonic()
    with pytest.raises(SessionError, match="block 4"):
        _run(model, ids, kill_at=3, choose=lambda r: r[1].peer_id, hosters=hosters)
    assert time.monotonic() - t0 < 30
    assert model.active_routes() == []
