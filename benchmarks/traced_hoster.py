"""`python -m benchmarks.traced_hoster <hoster arguments>`: a hoster with `benchmarks.chain_trace` timing.

The same process as `python -m hoster` (same options, same code), with the step path's
methods wrapped to record timestamps (`benchmarks.profile_chain` reads them).
"""

from __future__ import annotations

import sys

if not __package__:  # also runnable as `python benchmarks/<name>.py`
    import pathlib as _pathlib

    sys.path.insert(0, str(_pathlib.Path(__file__).resolve().parent.parent))

from benchmarks.chain_trace import install_hoster  # noqa: E402  (imports nothing heavy: no torch yet)
from hoster.__main__ import main  # noqa: E402  (sets the thread-pool defaults before torch)

if __name__ == "__main__":
    install_hoster()
    sys.exit(main())
