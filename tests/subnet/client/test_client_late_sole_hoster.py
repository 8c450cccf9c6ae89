"""A hoster that misses its step deadline while no other hoster serves its blocks is waited for
(up to the request's own timeout), not banned into a "cannot serve" error: on a loaded machine or
during a long prefill a late answer beats none. Found when a benchmark's only hoster, slowed by
a devnet beside it, failed a generation with `StepDeadline ... is alive but did not answer`.

Real hosters on 127.0.0.1, frozen with SIGSTOP (connection open, nothing answers, the liveness
probe fails too) for longer than their step deadline and then resumed; the tokens must equal the
unfrozen run's. Covers the direct step (its request kept in flight, no recompute) and the
pushed step (dropped, sent again directly).
"""

from __future__ import annotations

import os
import signal
import threading

import pytest
import torch

from subnet.client import DistributedModelForCausalLM

pytestmark = pytest.mark.slow

NEW_TOKENS = 10
FREEZE_AT = 4


@pytest.fixture(scope="module")
def swarms(swarm_factory, tiny_llama):
    """One swarm with a single hoster of every block, one with a chain of two hosters."""
    out = {}
    for name, spans in (("whole", [(0, 8)]), ("chain", [(0, 4), (4, 8)])):
        s = swarm_factory()
        hosters = s.start_hosters(tiny_llama, spans)
        model = DistributedModelForCausalLM.from_pretrained(tiny_llama, initial_peers=s.initial_peers)
        out[name] = (model, {h.peer_id: h for h in hosters})
    yield out
    for model, _ in out.values():
        model.close()


def _greedy(model, ids, freeze=None, after=None):
    """Greedy tokens step by step; `freeze(session)` runs before step FREEZE_AT, `after(session)` right
    after it. Returns tokens, session."""
    with model.inference_session(max_length=ids.shape[1] + NEW_TOKENS) as sess:
        hidden = sess.step(model.head.embed_ids(ids))
        tokens = [int(model.head.logits(hidden).argmax(-1))]
        for i in range(1, NEW_TOKENS):
            if i == FREEZE_AT and freeze is not None:
                freeze(sess.session)
            if i == FREEZE_AT + 1 and after is not None:
                after(sess.session)
            hidden = sess.step(model.head.embed_ids(torch.tensor([[tokens[-1]]])))
            tokens.append(int(model.head.logits(hidden).argmax(-1)))
        return tokens, sess.session


@pytest.mark.parametrize("layout, victim", [("whole", 0), ("chain", 1)], ids=["direct-step", "pushed-step"])
def test_a_late_hoster_with_no_replacement_is_waited_for(swarms, layout, victim):
    model, hosters = swarms[layout]
    ids = model.tokenizer("Hosters serve blocks, validators check them", return_tensors="pt")["input_ids"]
    baseline, _ = _greedy(model, ids)
    cfg = model.manager.config
    frozen: list = []
    froze_for: list[float] = []

    def freeze(session):
        peer = session.route[victim].peer_id
        deadline = model.manager.step_times.deadline(peer, 1, cfg.request_timeout)
        assert deadline is not None, "no step deadline: the test would not exercise a missed one"
        # past the deadline and the liveness probe, well inside the request timeout
        seconds = min(2 * deadline + cfg.probe_timeout + 1.0, 0.6 * cfg.request_timeout)
        proc = hosters[peer].proc.proc
        os.killpg(proc.pid, signal.SIGSTOP)
        frozen.append(proc)
        froze_for.append(seconds)
        threading.Timer(seconds, os.killpg, (proc.pid, signal.SIGCONT)).start()

    estimates: list = []

    def after(session):
        estimates.append(model.manager.step_times.estimate(session.route[victim].peer_id))

    try:
        tokens, session = _greedy(model, ids, freeze, after)
    finally:
        for proc in frozen:
            os.killpg(proc.pid, signal.SIGCONT)  # never leave a stopped hoster behind
    assert frozen and tokens == baseline
    assert session.waited_late >= 1 and session.reroutes == 0
    # the wait is not taken for the hoster's speed: right after the frozen step, its step time (which
    # sets every session's deadline for it, and its cost in routing) is still a step's, not the freeze's
    assert estimates and estimates[0] is not None and estimates[0] < froze_for[0] / 10, (estimates, froze_for)
