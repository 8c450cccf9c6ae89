"""LoRA adapters on a block span: per-row deltas on shared base weights match peft's own forward."""

from __future__ import annotations

import json
import os

import pytest
import torch

from hoster.adapters import check_sources, load_span_adapters, rows_context
from subnet.model.adapters import AdapterError, parse_adapter_list
from subnet.model.blocks import load_blocks
from subnet.node.checks import check_adapters
from subnet.node.errors import UserError
from tests.adapter_fixtures import make_adapter, peft_reference


@pytest.fixture(scope="module")
def lora_setup(tiny_model_factory, tmp_path_factory):
    path = tiny_model_factory("llama")
    root = tmp_path_factory.mktemp("adapters")
    a = make_adapter(path, str(root / "lora-a"), seed=1)
    b = make_adapter(path, str(root / "lora-b"), seed=2, r=2, targets=["q_proj", "v_proj", "down_proj"], rslora=True)
    return path, a, b


def _hidden_of(model, ids, layers):
    """Hidden state after `layers` decoder layers of a (peft-wrapped) transformers model."""
    with torch.no_grad():
        return model(input_ids=ids, output_hidden_states=True).hidden_states[layers]


def test_span_matches_peft_per_row_in_one_batch(lora_setup):
    path, a, b = lora_setup
    span = load_blocks(path, 0, 2, progress=False)
    load_span_adapters(span, [a, b], path)
    ids = torch.tensor([[5, 17, 42, 7, 99, 3]])
    embeds = peft_reference(path, None).get_input_embeddings()(ids).detach()
    x = embeds.repeat(3, 1, 1)  # rows: lora-a, none, lora-b: one batch on the same base weights
    with rows_context(span, [("lora-a", 1), (None, 1), ("lora-b", 1)]):
        out = span(x)
    refs = [_hidden_of(peft_reference(path, d), ids, 2)[0] for d in (a, None, b)]
    for row, ref in zip(out, refs):
        torch.testing.assert_close(row, ref, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(refs[0], refs[1], atol=1e-3) and not torch.allclose(refs[2], refs[1], atol=1e-3)
    with rows_context(span, [("lora-a", 1), (None, 1), ("lora-a", 1)]):  # rows not contiguous: index path
        mixed = span(x)
    for row, ref in zip(mixed, [refs[0], refs[1], refs[0]]):
        torch.testing.assert_close(row, ref, rtol=1e-4, atol=1e-4)
    plain = span(embeds)  # outside a context no row uses an adapter
    torch.testing.assert_close(plain[0], refs[1], rtol=1e-4, atol=1e-4)


def test_bad_adapters_fail_in_one_line(lora_setup, tiny_model_factory, tmp_path):
    path, a, _ = lora_setup
    other = tiny_model_factory("llama", hidden_size=96, intermediate_size=160)
    foreign = make_adapter(other, str(tmp_path / "foreign"), seed=3)
    with pytest.raises(AdapterError, match="is for base model") as e:
        check_sources([foreign], path)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="is for base model"):  # `mesh-node --hoster`: before anything starts
        check_adapters(f"{a},{foreign}", path)
    # claims the right base model, but its factors have another model's shapes
    cfg_path = os.path.join(foreign, "adapter_config.json")
    cfg = json.load(open(cfg_path))
    cfg["base_model_name_or_path"] = path
    json.dump(cfg, open(cfg_path, "w"))
    span = load_blocks(path, 0, 2, progress=False)
    with pytest.raises(AdapterError, match="does not fit this model") as e:
        load_span_adapters(span, [foreign], path)
    assert "\n" not in str(e.value)
    # a truncated weights file
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text(open(os.path.join(a, "adapter_config.json")).read())
    data = open(os.path.join(a, "adapter_model.safetensors"), "rb").read()
    (broken / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterError, match="corrupt or truncated") as e:
        check_sources([str(broken)], path)
    assert "\n" not in str(e.value)
    with pytest.raises(AdapterError, match="neither a directory nor"):
        check_sources(["nobody/no-such-adapter"], path)
    with pytest.raises(ValueError, match="two adapters are named"):
        parse_adapter_list(f"{a},{a}")


def test_hub_id_resolves_from_the_local_cache_only(lora_setup, tmp_path, monkeypatch):
    """A hub id is read from huggingface_hub's cache (HF_HUB_OFFLINE is set for tests: no download)."""
    import shutil

    from huggingface_hub import constants

    path, a, _ = lora_setup
    snap = tmp_path / "models--someone--lora-c" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(os.path.join(a, f), snap / f)
    (tmp_path / "models--someone--lora-c" / "refs").mkdir()
    (tmp_path / "models--someone--lora-c" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    span = load_blocks(path, 2, 4, progress=False)
    load_span_adapters(span, ["someone/lora-c"], path)
    assert list(span.adapters) == ["someone--lora-c"]
    assert {layer for layer, _ in span.adapters["someone--lora-c"].factors} == {2, 3}  # only the span's tensors
