"""`hoster --compile`: one-session decode steps through a torch.compile'd span (hoster/compiled.py).

One compiled backend per module (compiling takes seconds): its steps must equal the eager
path's within float32 rounding, for several sessions, lengths and buffer growths, without
compiling again after warm-up; everything else must stay eager.
"""

from __future__ import annotations

import pytest
import torch
from backend_steps import seeded, step

from hoster.backend import Backend
from hoster.compiled import kernel_for_compile
from subnet.model.blocks import load_blocks

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backends(tiny_llama):
    """The default linear kernel (onednn: its packed products enter the graph as one op each); the `torch`
    kernel's graphs: tests/hoster/test_compile_auto.py."""
    compiled = Backend(load_blocks(tiny_llama, 0, 8, progress=False, linear_kernel="onednn"), compile_decode=True)
    assert compiled.warm_up() > 0 and compiled.compiled.ready
    eager = Backend(load_blocks(tiny_llama, 0, 8, progress=False, linear_kernel="onednn"))
    yield compiled, eager
    compiled.shutdown()
    eager.shutdown()




def test_compiled_steps_equal_eager_across_sessions_lengths_and_growth(backends):
    compiled, eager = backends
    before, fallbacks = compiled.compiled.steps, compiled.compiled.fallbacks
    for trial, (prompt, steps, max_length) in enumerate([(5, 40, 2048), (2, 150, 2048), (9, 30, 40)]):
        sc = compiled.open_session(0, 8, 1, max_length)
        se = eager.open_session(0, 8, 1, max_length)
        x = seeded(1, prompt, 64, seed=trial)
        torch.testing.assert_close(step(compiled, sc, x, 0), step(eager, se, x, 0), rtol=0, atol=0)  # eager prefill
        for i in range(steps - prompt + 1 if max_length < 64 else steps):
            x = seeded(1, 1, 64, seed=100 * trial + i)
            got, want = step(compiled, sc, x, sc.length), step(eager, se, x, se.length)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        compiled.close_session(sc)
        eager.close_session(se)
    # every decode step from length 2 on was compiled (the KV buffers grew several times), none refused
    assert compiled.compiled.steps - before >= 40 + 150 + 20
    assert compiled.compiled.fallbacks == fallbacks  # counted per backend: another test may force one


def test_rollback_then_decode_stays_compiled_and_correct(backends):
    compiled, eager = backends
    fallbacks = compiled.compiled.fallbacks
    sc, se = compiled.open_session(0, 8, 1, 256), eager.open_session(0, 8, 1, 256)
    x = seeded(1, 6, 64, seed=7)
    step(compiled, sc, x, 0), step(eager, se, x, 0)
    for i in range(5):
        y = seeded(1, 1, 64, seed=70 + i)
        step(compiled, sc, y, 6 + i), step(eager, se, y, 6 + i)
    y = seeded(1, 1, 64, seed=99)  # rewind to position 4 (a client retrying a step elsewhere)
    torch.testing.assert_close(step(compiled, sc, y, 4), step(eager, se, y, 4), rtol=1e-4, atol=1e-4)
    assert compiled.compiled.fallbacks == fallbacks


def test_other_steps_stay_eager(backends):
    compiled, _ = backends
    n0 = compiled.compiled.steps
    pair = compiled.open_session(0, 8, 2, 128)  # two rows
    step(compiled, pair, seeded(2, 4, 64, seed=1), 0)
    step(compiled, pair, seeded(2, 1, 64, seed=2), 4)
    part = compiled.open_session(2, 6, 1, 128)  # a sub-range of the span
    step(compiled, part, seeded(1, 4, 64, seed=3), 0)
    step(compiled, part, seeded(1, 1, 64, seed=4), 4)
    lone = compiled.open_session(0, 8, 1, 128)
    step(compiled, lone, seeded(1, 3, 64, seed=5), 0)  # a prompt
    step(compiled, lone, seeded(1, 2, 64, seed=6), 3)  # two positions at once
    assert compiled.compiled.steps == n0
    step(compiled, lone, seeded(1, 1, 64, seed=7), 5)  # the only kind of step that is compiled
    assert compiled.compiled.steps == n0 + 1
    for s in (pair, part, lone):
        compiled.close_session(s)


def test_a_step_the_graph_does_not_cover_runs_eagerly_instead_of_compiling(backends):
    compiled, _ = backends
    decode = compiled.compiled
    session = compiled.open_session(0, 8, 1, 128)
    step(compiled, session, seeded(1, 4, 64, seed=1), 0)
    kv = session.cache
    from hoster.cache import KVCache

    before = decode.fallbacks
    kv.reserve(kv.length + 1)
    odd = seeded(1, 1, 64, seed=2).double()  # another dtype: a guard the warm-up did not compile for
    with torch.inference_mode():
        assert decode(odd, KVCache(kv), 0, 8) is None
    assert decode.fallbacks == before + 1 and decode.ready
    compiled.close_session(session)


def test_compile_takes_the_onednn_and_torch_kernels(monkeypatch):
    monkeypatch.delenv("MESH_LINEAR_KERNEL", raising=False)
    assert kernel_for_compile(None) == "onednn" and kernel_for_compile("torch") == "torch"
    with pytest.raises(ValueError, match="--compile needs the 'onednn' or 'torch' linear kernel, not 'blas'"):
        kernel_for_compile("blas")
    monkeypatch.setenv("MESH_LINEAR_KERNEL", "blas")
    with pytest.raises(ValueError, match="not 'blas'"):
        kernel_for_compile(None)


def test_compiled_hoster_generates_the_local_tokens(tiny_llama):
    """A whole compiled hoster behind the real client: greedy tokens equal local transformers."""
    from transformers import AutoModelForCausalLM

    from hoster.server import Hoster
    from subnet.client import DistributedModelForCausalLM

    h = Hoster(tiny_llama, compile_decode=True, progress=False, model_name="compiled-llama").start()
    model = None
    try:
        assert h.backend.compiled is not None and h.backend.compiled.ready
        model = DistributedModelForCausalLM.from_pretrained(tiny_llama, initial_peers=h.maddrs,
                                                            model_name="compiled-llama", request_timeout=30.0)
        model.wait_until_servable(60)
        local = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
        ids = model.tokenizer("The quick brown fox", return_tensors="pt")["input_ids"]
        before = h.backend.compiled.steps
        expected = local.generate(ids, max_new_tokens=24, do_sample=False)
        assert model.generate(ids, max_new_tokens=24, speculative=0).tolist() == expected.tolist()
        assert h.backend.compiled.steps - before >= 20 and h.backend.compiled.fallbacks == 0
    finally:
        if model is not None:
            model.close()
        h.shutdown()


def test_packed_weights_are_compiled_as_one_op_and_go_with_their_module():
    """A graph calls `mesh_node::packed_linear` by handle (no graph break: dynamo cannot trace oneDNN's
    blocked tensor itself), equal to the eager product; the handle's weight is freed with its module."""
    import gc

    from torch._dynamo.utils import counters

    from subnet.model import kernels

    lin = torch.nn.Linear(64, 96)
    packed = kernels.PackedLinear(lin)
    handle = packed.handle
    assert kernels._PACKED[handle][0] is packed.packed
    x = torch.randn(3, 1, 64)
    counters.clear()
    with torch.inference_mode():
        got = torch.compile(packed, fullgraph=True, dynamic=True)(x)
        torch.testing.assert_close(got, lin(x), rtol=1e-5, atol=1e-5)
    assert not counters["graph_break"]
    del packed
    gc.collect()
    assert handle not in kernels._PACKED
