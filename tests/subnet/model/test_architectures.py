"""Gemma 2/3, Phi-3, Llama 3 rope scaling, Mixtral, Qwen3-MoE: split spans equal the full local model."""

from __future__ import annotations

import json

import pytest
import torch

from subnet.model.architectures import SUPPORTED_ARCHITECTURES, CheckpointError, fuse_experts
from subnet.model.blocks import UnsupportedModelError, load_blocks, load_client_parts, load_config

# transformers renames keywords with a FutureWarning before removing them: a span must use today's names
pytestmark = pytest.mark.filterwarnings("error::FutureWarning")

ARCHS = ["llama3", "gemma2", "gemma3", "phi3", "mixtral", "qwen3_moe"]


@pytest.fixture(scope="module")
def references():
    return {}


def _reference(references, path):
    from transformers import AutoModelForCausalLM

    if path not in references:
        references[path] = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return references[path]


@pytest.mark.parametrize("arch", ARCHS)
def test_split_spans_and_client_parts_equal_full_model(tiny_model_factory, references, arch):
    """Client embedding (Gemma: scaled) -> [0:3) -> [3:8) -> client norm + head (Gemma: soft-capped) = logits."""
    path = tiny_model_factory(arch)
    ref = _reference(references, path)
    parts = load_client_parts(path, linear_kernel="torch")
    spans = [load_blocks(path, 0, 3, progress=False), load_blocks(path, 3, 8, progress=False)]
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(3))  # > the sliding windows
    with torch.no_grad():
        expected = ref(ids).logits
        h = parts.embed_tokens(ids)
        for span in spans:
            h = span(h)
        got = parts.lm_head(parts.norm(h))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    if arch.startswith("gemma"):  # the family's client-side features are really exercised
        assert ref.config.final_logit_softcapping and expected.abs().max() < ref.config.final_logit_softcapping
        torch.testing.assert_close(parts.embed_tokens(ids[:, :1]),
                                   ref.model.embed_tokens.weight[ids[:, :1]] * ref.config.hidden_size ** 0.5)


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_with_kv_cache_equals_generate(tiny_model_factory, references, arch):
    path = tiny_model_factory(arch)
    ref = _reference(references, path)
    parts = load_client_parts(path, linear_kernel="torch")
    spans = [load_blocks(path, 0, 5, progress=False), load_blocks(path, 5, 8, progress=False)]
    ids = torch.randint(0, 300, (1, 14), generator=torch.Generator().manual_seed(4))
    expected = ref.generate(ids, max_new_tokens=14, do_sample=False)
    caches = [s.new_cache() for s in spans]
    seq, step = ids, ids
    for _ in range(14):
        h = parts.embed_tokens(step)
        for span, cache in zip(spans, caches):
            h = span(h, cache=cache)
        step = parts.lm_head(parts.norm(h))[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, step], 1)
    assert seq.tolist() == expected.tolist()


def test_moe_layers_hold_stacked_experts(tiny_model_factory):
    span = load_blocks(tiny_model_factory("mixtral"), 2, 3, progress=False)
    experts = span.layers["2"].mlp.experts
    assert tuple(experts.gate_up_proj.shape) == (4, 2 * 128, 64) and tuple(experts.down_proj.shape) == (4, 64, 128)


def test_fuse_experts_rejects_missing_experts(tiny_model_factory):
    config = load_config(tiny_model_factory("qwen3_moe"))
    state = {f"mlp.experts.{e}.{w}.weight": torch.zeros(2, 2) for e in (0, 2) for w in ("gate_proj", "up_proj",
                                                                                       "down_proj")}
    with pytest.raises(CheckpointError, match="experts"):
        fuse_experts(config, state, 3)
    state = {k.replace("experts.2.", "experts.1."): v for k, v in state.items()}
    del state["mlp.experts.1.up_proj.weight"]
    with pytest.raises(CheckpointError, match="missing expert tensor mlp.experts.1.up_proj.weight"):
        fuse_experts(config, state)


def test_unsupported_architecture_names_it_and_the_supported_list(tmp_path):
    from transformers import AutoConfig

    AutoConfig.for_model("gpt_neox", num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                         intermediate_size=64).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError) as err:
        load_config(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "'gpt_neox'" in msg
    assert all(arch in msg for arch in SUPPORTED_ARCHITECTURES)


def test_pre_quantized_fp8_checkpoint_gets_a_clear_message(tiny_model_factory, tmp_path):
    """An FP8 checkpoint (weights + `weight_scale_inv` tensors) is refused by its config, in one line."""
    import shutil

    src = tiny_model_factory("llama")
    shutil.copytree(src, tmp_path / "fp8", dirs_exist_ok=True)
    cfg_path = tmp_path / "fp8" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as err:
        load_config(tmp_path / "fp8")
    assert "pre-quantized (fp8" in str(err.value) and "--quant" in str(err.value) and "\n" not in str(err.value)


def test_scale_tensors_without_quantization_config_are_explained(tiny_model_factory, tmp_path):
    """FP8 exports that dropped `quantization_config` still say why their extra tensors are there."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_model_factory("llama"), tmp_path / "m", dirs_exist_ok=True)
    f = tmp_path / "m" / "model.safetensors"
    tensors = load_file(f)
    tensors["model.layers.1.mlp.down_proj.weight_scale_inv"] = torch.ones(1, 1)
    save_file(tensors, f, metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as err:
        load_blocks(tmp_path / "m", 0, 2, progress=False)
    msg = str(err.value)
    assert "layer 1" in msg and "weight_scale_inv" in msg and "pre-quantized" in msg and "\n" not in msg
