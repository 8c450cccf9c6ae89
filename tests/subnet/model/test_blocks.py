"""Block loading: transformers' own layers, only the requested tensors, equal to the full model."""

from __future__ import annotations

import pytest
import torch

from subnet.model.blocks import UnsupportedModelError, load_blocks, load_client_parts, load_config, model_uid
from subnet.model.kernels import BlasLinear, PackedLinear
from tests.reference import reference_layers

# transformers renames keywords with a FutureWarning before removing them: a span must use today's names
pytestmark = pytest.mark.filterwarnings("error::FutureWarning")


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("k,n", [(0, 8), (3, 6), (7, 8)])
def test_span_equals_full_model_layers(tiny_model_factory, arch, k, n):
    path = tiny_model_factory(arch)
    ids = torch.randint(0, 200, (2, 11), generator=torch.Generator().manual_seed(1))
    h_in, h_out = reference_layers(path, None, k, n, ids)
    span = load_blocks(path, k, n, "float32", progress=False)
    assert type(span.layers[str(k)]).__name__ == f"{'Llama' if arch == 'llama' else 'Qwen3'}DecoderLayer"
    out = span(h_in)
    torch.testing.assert_close(out, h_out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_cached_steps_equal_full_sequence_and_rollback(tiny_model_factory, arch):
    path = tiny_model_factory(arch)
    span = load_blocks(path, 2, 7, "float32", progress=False)
    h = torch.randn(1, 10, 64, generator=torch.Generator().manual_seed(2))
    full = span(h)
    cache = span.new_cache()
    parts = [span(h[:, :4], cache=cache)] + [span(h[:, t:t + 1], cache=cache) for t in range(4, 10)]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-5)
    assert cache.get_seq_length(2) == 10
    cache.crop(-4)  # roll back to position 6 and replay a different continuation
    h2 = h.clone()
    h2[:, 6:] = torch.randn(1, 4, 64, generator=torch.Generator().manual_seed(3))
    replay = span(h2[:, 6:], cache=cache)
    torch.testing.assert_close(replay, span(h2)[:, 6:], rtol=1e-5, atol=1e-5)


def test_memory_grows_with_blocks_not_model(tiny_llama):
    two = load_blocks(tiny_llama, 0, 2, progress=False)
    eight = load_blocks(tiny_llama, 0, 8, progress=False)
    print(f"\nweights: 2 blocks {two.weight_bytes()} B, 8 blocks {eight.weight_bytes()} B")
    assert two.weight_bytes() * 4 == eight.weight_bytes()
    assert set(two.layers) == {"0", "1"}


def test_dtype_option(tiny_qwen3):
    span = load_blocks(tiny_qwen3, 1, 3, "bfloat16", progress=False)
    assert all(p.dtype == torch.bfloat16 for p in span.parameters())
    out = span(torch.randn(1, 3, 64, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_bad_range_and_unsupported_architecture(tiny_llama, tmp_path):
    with pytest.raises(ValueError, match="out of range"):
        load_blocks(tiny_llama, 6, 9, progress=False)
    from transformers import AutoConfig

    AutoConfig.for_model("gpt2", n_layer=2, n_embd=32, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="gpt2"):
        load_config(tmp_path)


def test_client_parts_untied_and_tied(tiny_model_factory):
    from transformers import AutoModelForCausalLM

    for tie in (False, True):
        path = tiny_model_factory("llama", tie_word_embeddings=tie)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        parts = load_client_parts(path, linear_kernel="torch")
        torch.testing.assert_close(parts.embed_tokens.weight, model.model.embed_tokens.weight)
        torch.testing.assert_close(parts.norm.weight, model.model.norm.weight)
        torch.testing.assert_close(parts.lm_head.weight, model.lm_head.weight)
        assert (parts.lm_head.weight is parts.embed_tokens.weight) == tie
        h = torch.randn(1, 2, 64)
        torch.testing.assert_close(parts.lm_head(parts.norm(h)), model.lm_head(model.model.norm(h)))
        packed = load_client_parts(path)  # the default: the LM head runs as a packed oneDNN product
        assert isinstance(packed.lm_head, PackedLinear)
        assert torch.equal(packed.embed_tokens.weight, parts.embed_tokens.weight)
        torch.testing.assert_close(packed.lm_head(packed.norm(h)), model.lm_head(model.model.norm(h)))
        fast = load_client_parts(path, linear_kernel="blas")  # numpy's OpenBLAS on the loaded weight
        assert isinstance(fast.lm_head, BlasLinear)
        assert (fast.lm_head.weight is fast.embed_tokens.weight) == tie  # a tied head stays shared: no copy
        with torch.inference_mode():
            torch.testing.assert_close(fast.lm_head(fast.norm(h)), model.lm_head(model.model.norm(h)))


def test_model_uid(tmp_path):
    d = tmp_path / "My Model_v1.5"
    d.mkdir()
    assert model_uid(d) == "my-model_v1.5"
    assert model_uid("Qwen/Qwen3-0.6B") == "qwen--qwen3-0.6b"
    assert model_uid("anything", name="Custom") == "custom"


@pytest.fixture(scope="module")
def sharded_llama(tiny_llama, tmp_path_factory):
    """The tiny Llama re-saved as many small safetensors shards with an index json."""
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("sharded")
    AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).save_pretrained(out, max_shard_size="60KB")
    assert (out / "model.safetensors.index.json").exists()
    return out


def test_sharded_checkpoint_local(sharded_llama, tiny_llama):
    a = load_blocks(sharded_llama, 3, 6, progress=False)
    b = load_blocks(tiny_llama, 3, 6, progress=False)
    x = torch.randn(1, 4, 64)
    assert torch.equal(a(x), b(x))


def test_hub_id_fetches_only_needed_shards(sharded_llama, tmp_path, monkeypatch):
    """A hub id goes through huggingface_hub.hf_hub_download, one file at a time, only what the span needs
    (the download itself is replaced by a local copy: tests never touch the network)."""
    import json
    import shutil

    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    fetched: list[str] = []

    def fake_download(repo_id, filename, **kwargs):
        assert repo_id == "acme/tiny-llama"
        src = sharded_llama / filename
        if not src.exists():
            raise EntryNotFoundError(f"{filename} not found")
        fetched.append(filename)
        shutil.copy(src, snapshot / filename)
        return str(snapshot / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    span = load_blocks("acme/tiny-llama", 6, 8, progress=False)
    weight_map = json.loads((sharded_llama / "model.safetensors.index.json").read_text())["weight_map"]
    needed = {f for n, f in weight_map.items() if n.startswith(("model.layers.6.", "model.layers.7."))}
    all_shards = set(weight_map.values())
    shards = {f for f in fetched if f.endswith(".safetensors")}
    print(f"\nfetched {len(shards)} of {len(all_shards)} shards")
    assert shards == needed and len(needed) < len(all_shards)
    x = torch.randn(1, 3, 64)
    assert torch.equal(span(x), load_blocks(sharded_llama, 6, 8, progress=False)(x))
    assert model_uid("acme/tiny-llama") == "acme--tiny-llama"
