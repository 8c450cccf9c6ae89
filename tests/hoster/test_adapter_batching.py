"""Sessions with different LoRA adapters (and none) batch together in the backend, each row exact."""

from __future__ import annotations

import asyncio

import torch

from hoster.adapters import load_span_adapters
from hoster.backend import Backend
from hoster.cache import CacheBudget
from subnet.model.blocks import load_blocks
from tests.adapter_fixtures import make_adapter, peft_reference


async def test_mixed_adapter_sessions_batch_and_match_peft(tiny_model_factory, tmp_path):
    path = tiny_model_factory("llama")
    a = make_adapter(path, str(tmp_path / "lora-a"), seed=1)
    b = make_adapter(path, str(tmp_path / "lora-b"), seed=2, r=2, targets=["q_proj", "o_proj", "up_proj"])
    span = load_blocks(path, 0, 6, progress=False)
    load_span_adapters(span, [a, b], path)
    ids = torch.tensor([[5, 17, 42, 7, 99, 3, 11, 8]])
    embeds = peft_reference(path, None).get_input_embeddings()(ids).detach()
    refs = {}
    for name, d in (("lora-a", a), ("lora-b", b), (None, None)):
        with torch.no_grad():
            hs = peft_reference(path, d)(input_ids=ids, output_hidden_states=True).hidden_states
        refs[name] = hs[6]  # after layer 6 (the last entry would be final-normed)
    backend = Backend(span, CacheBudget(1000), gather_window=0.05)
    try:
        choices = ["lora-a", None, "lora-b", "lora-a"]
        sessions = [backend.open_session(0, 6, 1, 16) for c in choices]
        for s, c in zip(sessions, choices):
            s.adapter = c  # as the servicer sets it from the open request's "adapter"
        prefill = await asyncio.gather(*[backend.step(s, embeds[:, :4], 0) for s in sessions])
        got = [[o] for o in prefill]
        for t in range(4, 8):  # one-position decode steps: batched across the sessions
            outs = await asyncio.gather(*[backend.step(s, embeds[:, t:t + 1], t) for s in sessions])
            for g, o in zip(got, outs):
                g.append(o)
        assert backend.batches_run >= 1
        for c, g in zip(choices, got):
            torch.testing.assert_close(torch.cat(g, 1), refs[c], rtol=1e-4, atol=1e-4)
        # the stateless forward path (rpc_forward: client-side checks of adapter sessions) applies it too
        fwd = await asyncio.gather(*[backend.forward(embeds, 0, 6, adapter=c) for c in ("lora-b", None)])
        torch.testing.assert_close(fwd[0], refs["lora-b"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fwd[1], refs[None], rtol=1e-4, atol=1e-4)
    finally:
        backend.shutdown()
