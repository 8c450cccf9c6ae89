"""The benchmarks (`python -m benchmarks.<name>`); shared pieces live in `benchmarks.common`.

Importing the package first imports `benchmarks.common`, which sets the thread-pool environment of
every timed process (OMP_WAIT_POLICY=PASSIVE, OMP_NUM_THREADS=2, ...: `benchmarks.common.CHILD_ENV`)
before torch loads. OpenMP reads its environment when its library loads, so the same settings made
after a benchmark module's own `import torch` did nothing in the benchmark's process: until the
thirteenth session its local rows and its client ran with spinning OpenMP workers beside the hosters,
while a real client (`mesh-node`) sets them first (subnet/model/process_env.py).
"""

from benchmarks import common  # noqa: F401  (first: see above)
