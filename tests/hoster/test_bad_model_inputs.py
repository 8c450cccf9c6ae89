"""Bad models and modes end `python -m hoster` with one line and a non-zero exit, before anything is announced."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def run_hoster(model: str, *extra: str, timeout: float = 240.0) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "hoster", "--model", model, "--blocks", "0:2", "--no-progress",
            "--log-level", "ERROR", *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


def assert_one_line_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode != 0 and "READY" not in res.stdout
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), res.stderr[-2000:]
    for n in needles:
        assert n in last, last


def test_truncated_safetensors(tiny_model_factory, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(tiny_model_factory("llama"), model)
    f = model / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert_one_line_error(run_hoster(str(model)), "corrupt or truncated safetensors file")


def test_quant_mode_this_device_cannot_run(tiny_model_factory):
    res = run_hoster(tiny_model_factory("llama"), "--quant", "nf4", "--device", "cuda")
    assert res.returncode == 2  # refused while checking the options: nothing was started
    assert_one_line_error(res, "--quant nf4 cannot run", "cuda")


def test_unsupported_architecture_names_the_supported_list(tmp_path):
    from transformers import AutoConfig

    AutoConfig.for_model("gpt_neox", num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                         intermediate_size=64).save_pretrained(tmp_path)
    assert_one_line_error(run_hoster(str(tmp_path)), "'gpt_neox'", "supported: gemma2, gemma3_text, llama")


def test_fp8_checkpoint(tiny_model_factory, tmp_path):
    model = tmp_path / "fp8"
    shutil.copytree(tiny_model_factory("llama"), model)
    cfg = json.loads((model / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    (model / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(run_hoster(str(model)), "pre-quantized (fp8")


@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_truncated_gguf_with_quant(tiny_model_factory, tmp_path, keep):
    """Cut in the metadata or in the tensor data: one line naming the GGUF file, before serving."""
    from subnet.model.tiny_model import write_gguf

    gguf = write_gguf(tiny_model_factory("llama"), tmp_path / "m.gguf")
    gguf.write_bytes(gguf.read_bytes()[: int(gguf.stat().st_size * keep)])
    assert_one_line_error(run_hoster(str(gguf), "--quant", "int8"), "GGUF")


def test_gguf_quant_mode_this_device_cannot_run(tiny_model_factory, tmp_path):
    from subnet.model.tiny_model import write_gguf

    gguf = write_gguf(tiny_model_factory("llama"), tmp_path / "m.gguf")
    res = run_hoster(str(gguf), "--quant", "nf4", "--device", "cuda")
    assert res.returncode == 2
    assert_one_line_error(res, "--quant nf4 cannot run", "cuda")
