"""Blocks from a .gguf file (subnet/model/gguf_weights.py) equal the safetensors checkpoint's blocks."""

from __future__ import annotations

import pytest
import torch

from subnet.model.architectures import CheckpointError
from subnet.model.blocks import load_blocks, load_config
from subnet.model.tiny_model import write_gguf


@pytest.fixture(scope="module")
def gguf_files(tiny_model_factory, tmp_path_factory):
    """(arch, ftype) -> (safetensors dir, gguf file), written once per module."""
    made = {}

    def get(arch: str, ftype: str = "f32"):
        if (arch, ftype) not in made:
            src = tiny_model_factory(arch)
            made[arch, ftype] = (src, str(write_gguf(src, tmp_path_factory.mktemp("gguf") / "m.gguf", ftype)))
        return made[arch, ftype]

    return get


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_f32_gguf_span_equals_safetensors_span(gguf_files, arch):
    src, gguf = gguf_files(arch)
    config = load_config(gguf)
    assert config.model_type == arch and config.num_hidden_layers == 8 and config.head_dim == 16
    x = torch.randn(2, 11, 64, generator=torch.Generator().manual_seed(0))
    want = load_blocks(src, 3, 7, progress=False, linear_kernel="torch")(x)
    got = load_blocks(gguf, 3, 7, progress=False, linear_kernel="torch")(x)
    assert torch.equal(got, want)


def test_f16_gguf_equals_weights_rounded_to_f16(gguf_files):
    src, gguf = gguf_files("llama", "f16")
    ref = load_blocks(src, 0, 2, progress=False, linear_kernel="torch")
    with torch.no_grad():
        for p in ref.parameters():
            if p.dim() >= 2:
                p.copy_(p.half().float())
    x = torch.randn(1, 7, 64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(load_blocks(gguf, 0, 2, progress=False, linear_kernel="torch")(x), ref(x),
                               rtol=1e-5, atol=1e-5)


def test_reads_only_the_span(gguf_files):
    from subnet.model.architectures import classes
    from subnet.model.blocks import _gguf_index

    _, gguf = gguf_files("llama")
    config = load_config(gguf)
    index = _gguf_index(gguf, config, classes(config)[0], 5, 7)
    assert index.names() and all(n.startswith(("model.layers.5.", "model.layers.6.")) for n in index.names())


def test_damaged_gguf_is_one_line(gguf_files, tmp_path):
    _, gguf = gguf_files("llama")
    data = open(gguf, "rb").read()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError) as err:
        load_blocks(str(bad), 0, 2, progress=False)
    assert "GGUF" in str(err.value) and "\n" not in str(err.value)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\xff" * 64)
    with pytest.raises(CheckpointError):
        load_config(str(junk))
