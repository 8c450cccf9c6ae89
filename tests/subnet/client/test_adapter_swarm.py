"""LoRA adapters across real hoster processes: tokens equal local transformers+peft, routing by adapter.

Swarm: hosters [0:4), [4:8) and [0:8) serve adapters lora-a and lora-b; another [0:8) serves
none. A session with an adapter never routes to the plain one, and client-side checks recompute
its steps with the adapter on the other adapter hosters (no false catch).
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from subnet.api.backends import BackendError
from subnet.api.swarm_backend import SwarmBackend
from subnet.client import DistributedModelForCausalLM, SessionError
from tests.adapter_fixtures import greedy, make_adapter, peft_reference

pytestmark = pytest.mark.slow
PROMPT = [[5, 17, 42, 7, 99, 3]]


@pytest.fixture(scope="module")
def adapter_swarm(swarm_factory, tiny_model_factory, tmp_path_factory):
    path = tiny_model_factory("llama")
    root = tmp_path_factory.mktemp("swarm-adapters")
    a = make_adapter(path, str(root / "lora-a"), seed=1)
    b = make_adapter(path, str(root / "lora-b"), seed=2, r=2, targets=["q_proj", "v_proj", "down_proj"], rslora=True)
    swarm = swarm_factory()
    swarm.start_hosters_async(path, [(0, 8)], "--model-name", "lo")
    swarm.start_hosters_async(path, [(0, 4), (4, 8), (0, 8)], "--model-name", "lo", "--adapters", f"{a},{b}")
    swarm.wait_all()
    model = DistributedModelForCausalLM.from_pretrained(path, initial_peers=swarm.initial_peers, model_name="lo",
                                                        request_timeout=30.0, verify_fraction=1.0,
                                                        verify_background=False)
    try:
        assert model.wait_until_servable(90)
        yield path, {"lora-a": a, "lora-b": b}, swarm, model
    finally:
        model.close()


def test_adapter_tokens_match_peft_and_skip_hosters_without_it(adapter_swarm):
    path, dirs, swarm, model = adapter_swarm
    servers = model.runtime.run(model.manager.servers(force=True), timeout=30)
    assert sorted(s.adapters for s in servers) == [()] + [("lora-a", "lora-b")] * 3
    plain = swarm.hosters[0].peer_id
    for _ in range(5):  # jittered costs: whichever adapter route is cheapest, never the plain hoster
        route = model.runtime.run(model.manager.make_route(adapter="lora-a"), timeout=60)
        assert plain not in {s.peer_id for s in route}
    with model.inference_session(len(PROMPT[0]) + 8, adapter="lora-a") as session:
        head, ids, got = model.head, torch.tensor(PROMPT), []
        for _ in range(8):
            tok = head.logits(session.step(head.embed_ids(ids))).argmax(-1, keepdim=True)
            got.append(int(tok))
            ids = tok
        verifier = session.session.verifier
        assert verifier.mismatches == 0  # recomputed with the adapter on other adapter hosters: agrees
        assert sum(st.check.passed for st in session.session.spans) >= 1
        assert all(st.check.receipt_ok for st in session.session.spans)  # receipts name model:adapter
    assert not model.manager.bans.banned()
    want = greedy(peft_reference(path, dirs["lora-a"]), torch.tensor(PROMPT), 8)
    assert got == want
    assert want != greedy(peft_reference(path, None), torch.tensor(PROMPT), 8)  # the adapter matters


def test_sessions_with_different_adapters_run_together(adapter_swarm):
    path, dirs, _, model = adapter_swarm
    choices = ["lora-a", "lora-b", None, "lora-a"]
    with ThreadPoolExecutor(len(choices)) as pool:
        outs = list(pool.map(lambda c: model.generate(torch.tensor(PROMPT), max_new_tokens=8, adapter=c)[0].tolist(),
                             choices))
    for choice, out in zip(choices, outs):
        ref = peft_reference(path, dirs[choice] if choice else None)
        assert out[len(PROMPT[0]):] == greedy(ref, torch.tensor(PROMPT), 8), choice


def test_api_model_names_pick_adapters_and_unknown_is_404(adapter_swarm):
    from fastapi.testclient import TestClient

    from subnet.api import create_app

    path, dirs, _, model = adapter_swarm
    with pytest.raises(SessionError, match="adapter 'nope'"):
        model.generate(torch.tensor(PROMPT), max_new_tokens=2, adapter="nope")
    backend = SwarmBackend(model)
    assert {c.id for c in backend.models()} >= {"lo", "lo:lora-a", "lo:lora-b"}
    with pytest.raises(BackendError, match="`nope`") as e:
        backend.tokenizer("lo:nope")
    assert e.value.status == 404
    with TestClient(create_app(backend)) as http:
        r = http.post("/v1/completions", json={"model": "lo:lora-b", "prompt": PROMPT[0], "max_tokens": 6,
                                               "temperature": 0})
        assert r.status_code == 200, r.text
        want = greedy(peft_reference(path, dirs["lora-b"]), torch.tensor(PROMPT), 6)
        assert r.json()["choices"][0]["text"] == model.tokenizer.decode(want)
        r = http.post("/v1/completions", json={"model": "lo:nope", "prompt": "hi", "max_tokens": 2})
        assert r.status_code == 404 and "lo:nope" in r.json()["error"]["message"]


def test_hoster_with_a_foreign_adapter_exits_in_one_line(adapter_swarm, tiny_model_factory, tmp_path):
    path, _, swarm, _ = adapter_swarm
    other = tiny_model_factory("llama", hidden_size=96, intermediate_size=160)
    foreign = make_adapter(other, str(tmp_path / "foreign"), seed=3)
    proc = subprocess.run([sys.executable, "-m", "hoster", "--model", path, "--blocks", "0:2", "--adapters", foreign,
                           "--initial-peers", *swarm.initial_peers, "--log-level", "ERROR", "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "READY" not in proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: adapter") and "is for base model" in lines[-1]
    assert "Traceback" not in proc.stderr
