"""Thread-pool defaults reach the libraries of a node process, and a bad kernel choice fails in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from subnet.model.process_env import DEFAULTS, set_thread_pool_defaults

ROOT = Path(__file__).resolve().parents[3]


def _run(code_or_args: list[str], **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in DEFAULTS}
    return subprocess.run([sys.executable, *code_or_args], cwd=ROOT, env={**full, "PYTHONPATH": str(ROOT), **env},
                          capture_output=True, text=True, timeout=120)


def test_defaults_fill_only_what_the_operator_left_unset(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
    set_thread_pool_defaults()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == DEFAULTS["OPENBLAS_THREAD_TIMEOUT"]


def test_hoster_entry_point_sets_the_openblas_timeout_before_numpy_loads():
    """OpenBLAS reads its spin timeout once, when numpy loads it: the entry point must come first."""
    probe = ("import hoster.__main__\n"
             "from threadpoolctl import ThreadpoolController\n"
             "lib = ThreadpoolController().select(internal_api='openblas').lib_controllers[0].dynlib\n"
             "print(lib.openblas_thread_timeout())\n")
    out = _run(["-c", probe])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == DEFAULTS["OPENBLAS_THREAD_TIMEOUT"]


def test_compile_with_another_kernel_is_a_one_line_error(tiny_llama):
    out = _run(["-m", "hoster", "--model", str(tiny_llama), "--blocks", "0:1", "--no-progress", "--compile",
                "--linear-kernel", "blas"])
    assert out.returncode == 2
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "--compile needs the 'onednn' or 'torch' linear kernel, not 'blas'" in errors[0]
    assert "Traceback" not in out.stderr


def test_unknown_linear_kernel_is_a_one_line_error(tiny_llama):
    out = _run(["-m", "hoster", "--model", str(tiny_llama), "--blocks", "0:1", "--no-progress"],
               MESH_LINEAR_KERNEL="fast")
    assert out.returncode == 2
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "unknown linear kernel 'fast'" in errors[0]
    assert "Traceback" not in out.stderr
