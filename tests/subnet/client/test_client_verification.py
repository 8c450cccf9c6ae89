"""Client-side checks: signed step receipts and recomputation on other hosters.

A hoster that serves probes and `rpc_forward` honestly but alters what it returns to
clients (tests/hoster/tamper_hoster.py, installed only in that test process) is caught at
the first step it serves; the client drops it, redoes the step elsewhere and generates
exactly the local transformers greedy tokens.
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch

from consensus.evidence import Evidence, chain_of, decode_evidence, encode_evidence, output_hash
from hoster.receipts import ReceiptBook
from keys import NodeKey
from subnet.client.verification import SpanCheck, StepVerifier, mirror_and_verify
from subnet.node.procs import ManagedProcess, python_module_argv

pytestmark = pytest.mark.long

HIDDEN = 16


def _step(book: ReceiptBook, check: SpanCheck, stream, x: torch.Tensor, position: int, *, tamper: bool = False):
    out = x * 2 + 1
    meta = {"receipt": book.sign("s1", 0, 4, x, position, out)}
    mirror_and_verify(check, stream, book.node_key.peer_id, book.model_uid, 0, 4, x,
                      position, out * 1.01 if tamper else out, meta)
    return out


def test_receipts_verify_across_steps_and_rollbacks():
    key = NodeKey.generate()
    book, check, stream = ReceiptBook(key, "m"), SpanCheck(), object()
    book.epoch = 7
    prefix = torch.randn(1, 10, HIDDEN)
    _step(book, check, stream, prefix[:, :6], 0)
    assert check.receipt_ok and check.receipt.epoch == 7 and check.receipt.length == 6
    _step(book, check, stream, prefix[:, 6:7], 6)
    assert check.receipt_ok
    other = torch.randn(1, 3, HIDDEN)  # rollback to position 4 with other inputs
    out = _step(book, check, stream, other, 4)
    assert check.receipt_ok and check.receipt.position == 4
    effective = torch.cat([prefix[:, :4], other], dim=1)
    assert check.receipt.input_chain == chain_of(effective)
    ev = Evidence(check.receipt, effective, out)
    assert decode_evidence(encode_evidence(ev), max_bytes=1 << 20).receipt == check.receipt


def test_a_receipt_for_another_output_or_signer_is_rejected():
    book, check, stream = ReceiptBook(NodeKey.generate(), "m"), SpanCheck(), object()
    _step(book, check, stream, torch.randn(1, 3, HIDDEN), 0, tamper=True)  # signed output != received output
    assert not check.receipt_ok and check.receipt is None
    x = torch.randn(1, 3, HIDDEN)
    meta = {"receipt": book.sign("s2", 0, 4, x, 0, x)}
    mirror_and_verify(check, stream, NodeKey.generate().peer_id, "m", 0, 4, x, 0, x, meta)  # someone else's key
    assert not check.receipt_ok
    mirror_and_verify(check, stream, book.node_key.peer_id, "m", 0, 4, x, 0, x, {"receipt": {"epoch": 1}})
    assert not check.receipt_ok
    assert StepVerifier(0.0).wants(check)  # a span without a valid receipt is always checked


def test_evidence_with_a_wrong_output_hash_is_malformed():
    book, check, stream = ReceiptBook(NodeKey.generate(), "m"), SpanCheck(), object()
    x = torch.randn(1, 4, HIDDEN)
    out = _step(book, check, stream, x, 0)
    assert check.receipt.output_hash == output_hash(out)
    data = encode_evidence(Evidence(check.receipt, x, out + 1))
    with pytest.raises(ValueError, match="output hash"):
        decode_evidence(data, max_bytes=1 << 20)


def test_verification_fraction_is_validated():
    with pytest.raises(ValueError):
        StepVerifier(1.5)
    v = StepVerifier(0.0, warmup=False)
    passed = SpanCheck(passed=1)
    assert not any(v.wants(passed) for _ in range(100))
    v = StepVerifier(0.5, warmup=False)
    hits = sum(v.wants(passed) for _ in range(2000))
    assert 800 < hits < 1200


def _greedy(model_path: str, ids: torch.Tensor, n: int) -> list[int]:
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    with torch.no_grad():
        out = ref.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def _start_tamperer(swarm, model: str, blocks: tuple[int, int], scale: float, *extra: str):
    from tests.subnet.client.conftest import HosterProc

    argv = python_module_argv("tests.hoster.tamper_hoster", "--tamper-scale", str(scale), *extra, "--model", model,
                              "--blocks", f"{blocks[0]}:{blocks[1]}", "--initial-peers", *swarm.initial_peers,
                              "--no-progress", "--log-level", "WARNING", "--announce-period", "2")
    proc = ManagedProcess("tamperer", argv, log_path=f"{swarm.logdir}/tamperer.log",
                          env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    h = HosterProc(proc, proc.wait_ready(180).split()[1], blocks)
    swarm.hosters.append(h)
    return h


@pytest.mark.slow
def test_client_catches_a_hoster_altering_traffic_and_keeps_greedy_tokens(swarm_factory, tiny_llama):
    from subnet.client import DistributedModelForCausalLM

    swarm = swarm_factory()
    honest = swarm.start_hosters(tiny_llama, [(0, 8), (0, 8)])
    liar = _start_tamperer(swarm, tiny_llama, (0, 8), 0.3)
    ids = torch.tensor([[1, 5, 9, 23, 42, 7]])
    want = _greedy(tiny_llama, ids, 12)
    model = DistributedModelForCausalLM.from_pretrained(tiny_llama, swarm.initial_peers, request_timeout=60)
    try:
        deadline = time.monotonic() + 120
        while {s.peer_id for s in model.runtime.run(model.manager.servers(force=True), timeout=60)} \
                != {h.peer_id for h in honest + [liar]}:
            assert time.monotonic() < deadline, "client never saw all three hosters"
            time.sleep(0.5)
        for h in honest:  # steer the route to the liar: the honest ones look slow (the checks still use them)
            model.manager.stats.pings[h.peer_id] = 5.0
        with model.inference_session(max_length=32) as sess:
            assert [s.peer_id for s in sess.route] == [liar.peer_id]
        checked = model.manager.config
        model.manager.config = replace(checked, verify_fraction=0.0, verify_warmup=False)
        unchecked = model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:].tolist()
        assert unchecked != want  # without checks the liar's alteration reaches the user
        model.manager.config = checked
        got = model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:].tolist()
        assert got == want
        assert model.manager.bans.is_banned(liar.peer_id)
    finally:
        model.close()


@pytest.mark.slow
def test_a_hoster_pushing_altered_inputs_cannot_frame_the_next_hoster(swarm_factory, tiny_llama):
    """The liar answers the client honestly but pushes altered outputs to the next hoster: the next
    hoster's receipt (over what it really got) does not match what the client saw, so the client
    stops pushing and redoes the step hop by hop; nobody honest is banned and the tokens are right."""
    from subnet.client import DistributedModelForCausalLM

    swarm = swarm_factory()
    second = swarm.start_hosters(tiny_llama, [(4, 8)])[0]
    liar = _start_tamperer(swarm, tiny_llama, (0, 4), 0.3, "--push-only")
    ids = torch.tensor([[3, 8, 13, 21, 34]])
    want = _greedy(tiny_llama, ids, 10)
    model = DistributedModelForCausalLM.from_pretrained(tiny_llama, swarm.initial_peers, request_timeout=60)
    try:
        deadline = time.monotonic() + 120
        while {s.peer_id for s in model.runtime.run(model.manager.servers(force=True), timeout=60)} \
                != {second.peer_id, liar.peer_id}:
            assert time.monotonic() < deadline, "client never saw both hosters"
            time.sleep(0.5)
        with model.inference_session(max_length=32) as sess:
            x = model.head.embed_ids(ids)
            sess.step(x)
            for t in range(10):  # decode steps are pushed hoster to hoster until the receipt gives it away
                sess.step(model.head.embed_ids(torch.tensor([[5 + t]])))
            assert sess.session.push_off
        got = model.generate(ids, max_new_tokens=10, do_sample=False)[0, ids.shape[1]:].tolist()
        assert got == want
        assert not model.manager.bans.is_banned(second.peer_id)
    finally:
        model.close()


@pytest.mark.slow
def test_a_lying_checker_is_outvoted_and_a_dispute_accuses_nobody(swarm_factory, tiny_llama, caplog):
    """The liar also lies on rpc_forward (it is the checker): with a third hoster the served output
    stands and the checker is excluded; without one the client logs a dispute and accuses nobody.
    The served hoster is honest, so the tokens are right either way."""
    import logging

    from subnet.client import DistributedModelForCausalLM

    swarm = swarm_factory()
    served, third = swarm.start_hosters(tiny_llama, [(0, 8), (0, 8)], "--announce-ttl", "8")
    liar = _start_tamperer(swarm, tiny_llama, (0, 8), 0.3, "--forward-too")
    ids = torch.tensor([[2, 4, 6, 8, 10, 12]])
    want = _greedy(tiny_llama, ids, 8)
    model = DistributedModelForCausalLM.from_pretrained(tiny_llama, swarm.initial_peers, request_timeout=60)
    caplog.set_level(logging.INFO, logger="subnet.client.verification")
    try:
        everyone = {served.peer_id, third.peer_id, liar.peer_id}
        deadline = time.monotonic() + 120
        while {s.peer_id for s in model.runtime.run(model.manager.servers(force=True), timeout=60)} != everyone:
            assert time.monotonic() < deadline, "client never saw the three hosters"
            time.sleep(0.5)
        # route: `served`; first checker: the liar; third opinion: `third`
        pings = model.manager.stats.pings
        pings.update({served.peer_id: 0.0, liar.peer_id: 1.0, third.peer_id: 5.0})
        assert model.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1]:].tolist() == want
        assert any(r.getMessage() == "verification_checker_lied" for r in caplog.records)
        assert not any(r.getMessage() == "verification_failed" for r in caplog.records)

        third.kill()  # now nobody can break the tie
        deadline = time.monotonic() + 120
        while third.peer_id in {s.peer_id for s in model.runtime.run(model.manager.servers(force=True),
                                                                         timeout=60)}:
            assert time.monotonic() < deadline, "the killed hoster's announcement never expired"
            time.sleep(0.5)
        caplog.clear()
        pings.update({served.peer_id: 0.0, liar.peer_id: 1.0})
        assert model.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1]:].tolist() == want
        assert any(r.getMessage() == "verification_disputed" for r in caplog.records)
        assert not any(r.getMessage() == "verification_failed" for r in caplog.records)
        assert not model.manager.bans.is_banned(served.peer_id)
    finally:
        model.close()


@pytest.mark.slow
def test_a_hoster_that_lies_only_after_the_first_step(swarm_factory, tiny_llama, caplog):
    """Honest on the first step of each session (the first check passes), lying from position 8 on.
    Blocking checks on every step keep every token right; background checks (the default) catch it
    while the token loop holds back the tokens of the checked steps, and the loop regenerates from
    the last verified token over the new route: the tokens are right either way."""
    import logging

    from subnet.client import DistributedModelForCausalLM

    swarm = swarm_factory()
    honest = swarm.start_hosters(tiny_llama, [(0, 8), (0, 8)])
    liar = _start_tamperer(swarm, tiny_llama, (0, 8), 0.3, "--tamper-after", "8")
    ids = torch.tensor([[9, 8, 7, 6, 5]])
    want = _greedy(tiny_llama, ids, 10)
    model = DistributedModelForCausalLM.from_pretrained(tiny_llama, swarm.initial_peers, request_timeout=60)
    caplog.set_level(logging.INFO, logger="subnet.client.verification")
    try:
        everyone = {liar.peer_id, *(h.peer_id for h in honest)}
        deadline = time.monotonic() + 120
        while {s.peer_id for s in model.runtime.run(model.manager.servers(force=True), timeout=60)} != everyone:
            assert time.monotonic() < deadline, "client never saw the three hosters"
            time.sleep(0.5)
        checked = model.manager.config
        for background in (False, True):
            model.manager.bans = type(model.manager.bans)(checked.ban_base, checked.ban_max)
            for h in honest:  # steer routes to the liar (the checks still use the honest hosters)
                model.manager.stats.pings[h.peer_id] = 5.0
            model.manager.stats.pings[liar.peer_id] = 0.0
            model.manager.config = replace(checked, verify_fraction=1.0, verify_background=background)
            caplog.clear()
            got = model.generate(ids, max_new_tokens=10, do_sample=False)[0, ids.shape[1]:].tolist()
            deadline = time.monotonic() + 60  # a background check may finish after the generation
            while not (any(r.getMessage() == "verification_failed" for r in caplog.records)
                       and model.manager.bans.is_banned(liar.peer_id)):
                assert time.monotonic() < deadline, "the liar was never caught and banned"
                time.sleep(0.2)
            assert got == want  # blocking: checked before sampling; background: held back, then regenerated
            if background:
                assert any(r.getMessage() == "generation_rewound" for r in caplog.records)
    finally:
        model.close()
