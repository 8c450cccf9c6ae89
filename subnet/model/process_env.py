"""Thread-pool settings a node process needs before torch and numpy load their libraries.

Several hosters and a client on one machine compute in turn along a chain. Idle worker
threads that spin keep the cores of whichever process is computing (measured: a 3-hoster
chain went from 0.39x to ~1.0x of local generate when OpenMP workers stopped spinning).

- OpenMP (torch): idle workers sleep at once.
- OpenBLAS (numpy; `subnet.model.kernels.BlasLinear`): by default an idle worker spins for 2^28
  cycles (~0.1 s) after each product; 2^20 (~0.4 ms here) keeps it awake across the gaps
  between one step's products and lets it sleep between steps.

Values the operator already set win. These only take effect if set before the libraries
load, so entry points call this first thing.
"""

from __future__ import annotations

import os

DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "20"}


def set_thread_pool_defaults() -> None:
    """Set each of `DEFAULTS` that the environment does not already define."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
