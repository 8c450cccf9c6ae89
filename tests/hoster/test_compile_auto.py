"""The default compile mode (hoster/compile_auto.py): decode steps compiled in the background, used
where measured faster, the choice and inductor's graphs kept on disk per model shape.

The suite pins MESH_NODE_COMPILE=off (tests/conftest.py); these tests set the default back.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from backend_steps import seeded, step

from hoster import compile_auto, cpu_contention
from hoster.backend import Backend
from hoster.compile_auto import Choices, auto_compiles, compile_mode, shape_key
from subnet.model.blocks import load_blocks

pytestmark = pytest.mark.slow




def test_the_default_mode_is_auto_and_the_flags_override_it(monkeypatch):
    from hoster.__main__ import build_parser
    from hoster.options import HosterOptions

    monkeypatch.delenv("MESH_NODE_COMPILE", raising=False)
    assert compile_mode(None) == "auto"
    assert compile_mode(None, force=True) == "on" and compile_mode("off") == "off"
    monkeypatch.setenv("MESH_NODE_COMPILE", "off")
    assert compile_mode(None) == "off" and compile_mode("auto") == "auto"
    monkeypatch.setenv("MESH_NODE_COMPILE", "fast")
    with pytest.raises(ValueError, match="unknown compile mode 'fast'"):
        compile_mode(None)
    parse = build_parser().parse_args
    assert HosterOptions.from_args(parse(["--model", "m", "--no-compile"])).compile_mode == "off"
    assert HosterOptions.from_args(parse(["--model", "m", "--compile-mode", "on"])).compile_mode == "on"
    assert HosterOptions.from_args(parse(["--model", "m"])).compile_mode is None


def test_auto_compiles_where_the_compiled_path_can_serve(monkeypatch):
    monkeypatch.delenv("MESH_LINEAR_KERNEL", raising=False)
    ok = dict(linear_kernel=None, device="cpu", quant="none", adapters=False, cached=None)
    assert auto_compiles("auto", **ok)
    assert auto_compiles("auto", **{**ok, "cached": {"path": "compiled"}})
    assert not auto_compiles("auto", **{**ok, "cached": {"path": "eager", "quiet": True}})  # slower here before
    assert auto_compiles("auto", **{**ok, "linear_kernel": "onednn"})  # its packed products are graph ops
    assert not auto_compiles("auto", **{**ok, "linear_kernel": "blas"})  # an explicit kernel a graph cannot call
    assert not auto_compiles("auto", **{**ok, "quant": "int8"})
    assert not auto_compiles("auto", **{**ok, "adapters": True})
    assert not auto_compiles("off", **ok) and auto_compiles("on", **{**ok, "cached": {"path": "eager", "quiet": True}})
    monkeypatch.setenv("MESH_LINEAR_KERNEL", "blas")
    assert not auto_compiles("auto", **ok)


def test_choices_file_is_bounded_and_survives_garbage(tmp_path, monkeypatch):
    monkeypatch.setattr(compile_auto, "MAX_CHOICES", 3)
    choices = Choices(tmp_path)
    (tmp_path / compile_auto.CHOICES_FILE).write_text("not json")
    assert choices.get("k") is None
    for i in range(5):
        choices.put(f"k{i}", {"path": "compiled" if i % 2 else "eager"})
    data = json.loads((tmp_path / compile_auto.CHOICES_FILE).read_text())
    assert list(data) == ["k2", "k3", "k4"]
    assert choices.get("k3") == {"path": "compiled"} and choices.get("k0") is None


def test_announced_decode_path_is_informational_and_forward_compatible():
    """Older writers announce no decode path (eager); a path this version does not know reads as
    "other" instead of hiding the hoster; anything not a short string is still malformed."""
    from subnet.swarm.announcements import Announcement

    payload = Announcement(peer_id="p", model="m", start=0, end=4, throughput=10.0, cache_tokens_free=8,
                           cache_tokens_total=8, version="v", state="online", num_blocks=8, hidden_size=64,
                           dtype="float32", decode_path="compiled").to_payload()
    assert Announcement.from_payload(payload).decode_path == "compiled"
    assert Announcement.from_payload({**payload, "decode_path": "fused_v2"}).decode_path == "other"
    assert Announcement.from_payload({k: v for k, v in payload.items() if k != "decode_path"}).decode_path == "eager"
    with pytest.raises(ValueError, match="decode_path"):
        Announcement.from_payload({**payload, "decode_path": ["compiled"]})


# Two blocks: the same one-graph compile as a whole span, at a quarter of the inductor time of 8.
SPAN_END = 2

_SECOND_START = """
import json, sys
from torch._dynamo.utils import counters
from hoster import compile_auto
from hoster.backend import Backend
from hoster.compile_auto import Choices, shape_key
from subnet.model.blocks import load_blocks
compile_auto.use_persistent_cache()
end = int(sys.argv[2])
span = load_blocks(sys.argv[1], 0, end, progress=False, linear_kernel="torch")
job = Backend(span, compile_decode="auto").start_auto_compile(shape_key(span.config, 0, end, span.dtype), Choices())
job.done.wait(600)
print(json.dumps({"inductor": dict(counters["inductor"]), "record": job.record}))
"""


def test_background_compile_serves_compiled_steps_and_the_disk_cache_is_reused(tiny_llama, tmp_path, monkeypatch):
    """Auto: steps are served eagerly while compiling; once the compiled path is measured faster it
    serves the decode steps (equal to eager within float32 rounding); a second start of the same
    shape (another process) loads inductor's graph from the persistent cache instead of generating it."""
    import os
    import subprocess
    import sys

    torch.compiler.reset()  # a graph of this shape compiled earlier in this process is reused, writing nothing
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("MESH_NODE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(compile_auto, "MIN_GAIN", 0.0)  # the choice itself: test_slower_compiled_path_*
    monkeypatch.setenv(compile_auto.ENV_BUCKETS, "0")  # the batched buckets: tests/hoster/test_compiled_batch.py
    directory = compile_auto.use_persistent_cache()
    assert directory == tmp_path / "inductor"
    eager = Backend(load_blocks(tiny_llama, 0, SPAN_END, progress=False, linear_kernel="torch"))
    span = load_blocks(tiny_llama, 0, SPAN_END, progress=False, linear_kernel="torch")
    key = shape_key(span.config, 0, SPAN_END, span.dtype)
    auto = Backend(span, compile_decode="auto")
    try:
        choices = Choices()
        job = auto.start_auto_compile(key, choices)
        s, e = auto.open_session(0, SPAN_END, 1, 256), eager.open_session(0, SPAN_END, 1, 256)
        x = seeded(1, 5, 64, seed=0)
        torch.testing.assert_close(step(auto, s, x, 0), step(eager, e, x, 0), rtol=0, atol=0)
        assert job.done.wait(900) and auto.decode_path == "compiled"
        assert choices.get(key)["path"] == "compiled"
        n0 = auto.compiled.steps
        for i in range(12):
            y = seeded(1, 1, 64, seed=100 + i)
            torch.testing.assert_close(step(auto, s, y, s.length), step(eager, e, y, e.length), rtol=1e-4, atol=1e-4)
        assert auto.compiled.steps - n0 == 12 and auto.compiled.fallbacks == 0
        auto.close_session(s)
        eager.close_session(e)
    finally:
        auto.shutdown()
        eager.shutdown()
    assert any(directory.rglob("*")) and (tmp_path / compile_auto.CHOICES_FILE).exists()
    # The reuse across starts, as an operator sees it: two fresh processes on a fresh cache directory. (Both
    # import torch._dynamo before use_persistent_cache, which sets TORCHINDUCTOR_CACHE_DIR to torch's default
    # /tmp directory: that once sent every start's graphs there, and this test passed or failed by what
    # other tests had left in /tmp; it failed on a fresh machine.)
    env = {**os.environ, "MESH_NODE_CACHE_DIR": str(tmp_path / "starts"), "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    starts = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", _SECOND_START, tiny_llama, str(SPAN_END)], env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        starts.append(json.loads(out.stdout.strip().splitlines()[-1]))
        assert starts[-1]["record"] and "error" not in starts[-1]["record"], starts  # the compile itself worked
    first, second = (s["inductor"] for s in starts)
    assert first.get("fxgraph_cache_miss", 0) >= 1, starts  # the first start generated and stored the graph
    assert any((tmp_path / "starts" / "inductor" / "fxgraph").rglob("*")), starts  # in the hoster's cache directory
    assert second.get("fxgraph_cache_hit", 0) >= 1 and not second.get("fxgraph_cache_miss"), starts


def test_slower_compiled_path_stays_eager_and_is_remembered(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("MESH_NODE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(compile_auto, "MIN_GAIN", 1e9)  # compiled can never be "faster" enough
    monkeypatch.setattr(cpu_contention, "MAX_OTHER_LOAD", float("inf"))  # timed under load: test_compile_retime
    span = load_blocks(tiny_llama, 0, 8, progress=False, linear_kernel="torch")
    key = shape_key(span.config, 0, 8, span.dtype)
    auto = Backend(span, compile_decode="auto")
    try:
        job = auto.start_auto_compile(key, Choices())
        assert job.done.wait(900)
        assert auto.decode_path == "eager" and not auto.compiled.ready
        record = Choices().get(key)
        assert record["path"] == "eager" and record["eager_ms"] > 0 and record["compiled_ms"] > 0
        assert not auto_compiles("auto", linear_kernel="torch", device="cpu", quant="none", adapters=False,
                                 cached=record)
    finally:
        auto.shutdown()


def test_default_hoster_generates_the_local_tokens(tiny_llama, tmp_path, monkeypatch):
    """A hoster with no compile flag at all (auto) behind the real client: it announces at once,
    switches to the compiled step in the background, and greedy tokens equal local transformers
    before and after the switch."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hoster.server import Hoster
    from subnet.client import DistributedModelForCausalLM
    from subnet.swarm.announcements import read_announcements

    monkeypatch.delenv("MESH_NODE_COMPILE", raising=False)
    monkeypatch.delenv("MESH_LINEAR_KERNEL", raising=False)
    monkeypatch.setenv("MESH_NODE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(compile_auto, "MIN_GAIN", 0.0)  # the tiny model: choose compiled whatever the timing
    monkeypatch.setenv(compile_auto.ENV_BUCKETS, "0")  # 8 blocks: three more graphs (test_compiled_batch.py)
    # The local reference runs before the hoster starts compiling: transformers' own attention forwards
    # set the `kernels` context variable that (once anything compiled) is one process-wide global, which
    # the span's rotary `Func` reads; run beside the background trace, it made dynamo diverge
    # (SpeculationLogDivergence, stress-test random order). A hoster process runs no such model.
    local = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    ids = AutoTokenizer.from_pretrained(tiny_llama)("The quick brown fox", return_tensors="pt")["input_ids"]
    expected = local.generate(ids, max_new_tokens=24, do_sample=False).tolist()
    h = Hoster(tiny_llama, progress=False, model_name="auto-llama").start()
    model = None
    try:
        assert h.compile_mode == "auto" and h.backend.auto is not None
        model = DistributedModelForCausalLM.from_pretrained(tiny_llama, initial_peers=h.maddrs,
                                                            model_name="auto-llama", request_timeout=30.0)
        model.wait_until_servable(60)
        assert model.tokenizer("The quick brown fox", return_tensors="pt")["input_ids"].tolist() == ids.tolist()
        assert model.generate(ids, max_new_tokens=24, speculative=0).tolist() == expected  # eager or compiling
        assert h.backend.auto.done.wait(900) and h.backend.decode_path == "compiled"
        compiled = h.backend.compiled
        before, busy_before = compiled.steps, compiled.busy
        assert model.generate(ids, max_new_tokens=24, speculative=0).tolist() == expected
        # A step that finds the process-wide compile lock held runs eagerly (hoster.compiled.COMPILE_LOCK):
        # in a test worker an earlier test's hoster may still be compiling in the background (its job outlives
        # its shutdown, and at lower CPU priority under a loaded suite it ran through this generate: 9 of 23
        # steps compiled). Every other step must take the graph, with no guard fallback.
        served, busy = compiled.steps - before, compiled.busy - busy_before
        assert served >= 1 and served + busy >= 20 and compiled.fallbacks == 0, (served, busy, compiled.fallbacks)
        assert h.info()["decode_path"] == "compiled"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # re-announced with the path it chose
            anns = [a for a in read_announcements(h.dht, "auto-llama") if a.peer_id == h.peer_id]
            if anns and anns[0].decode_path == "compiled":
                break
            time.sleep(0.5)
        else:
            pytest.fail("the announcement never said decode_path=compiled")
    finally:
        if model is not None:
            model.close()
        h.shutdown()


def test_a_failed_compile_serves_eagerly_and_is_not_remembered(tiny_llama, tmp_path, monkeypatch):
    """A compiler failure (e.g. a trace broken by another thread) leaves the hoster eager for this run
    only: the choices file keeps no record of it, so the next start compiles again."""
    from hoster.compiled import CompiledDecode

    def broken(self, new_kv, new_cache):
        raise RuntimeError("SpeculationLogDivergence")

    monkeypatch.setattr(CompiledDecode, "warm_up", broken)
    span = load_blocks(tiny_llama, 0, 2, progress=False, linear_kernel="torch")
    auto = Backend(span, compile_decode="auto")
    try:
        choices, key = Choices(tmp_path), shape_key(span.config, 0, 2, span.dtype)
        job = auto.start_auto_compile(key, choices)
        assert job.done.wait(60) and auto.decode_path == "eager"
        assert "SpeculationLogDivergence" in job.record["error"]
        assert choices.get(key) is None
    finally:
        auto.shutdown()
