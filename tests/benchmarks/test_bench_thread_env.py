"""Every benchmark process runs with the thread-pool settings it gives the hosters it times."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_SPY = """
import os, sys
seen = []
class FirstTorchImport:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY"))
        return None
sys.meta_path.insert(0, FirstTorchImport())
import importlib
importlib.import_module(sys.argv[1])
print(seen[0])
"""


@pytest.mark.parametrize("module", ["benchmarks.generation", "benchmarks.kernels"])
def test_openmp_settings_are_in_place_before_torch_loads(module):
    """OpenMP reads OMP_WAIT_POLICY when its library loads (with torch): set afterwards it does nothing. The
    benchmarks' own processes (local rows, the client) once ran with spinning workers beside the hosters."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_", "OPENBLAS_"))}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", _SPY, module], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "PASSIVE"
