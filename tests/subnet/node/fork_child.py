"""A child for tests/subnet/node/test_forkserver.py: reports what a forked `python -m` child sees.

    python -m tests.subnet.node.fork_child report        # one JSON line, exit 0
    python -m tests.subnet.node.fork_child exit N        # exit status N
    python -m tests.subnet.node.fork_child sleep         # "sleeping", then sleep until signalled
    python -m tests.subnet.node.fork_child raise         # an uncaught exception
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time

import torch


def main(argv: list[str]) -> int:
    what = argv[0]
    if what == "report":
        print(json.dumps({
            "argv": argv, "argv0": sys.argv[0], "cwd": os.getcwd(), "pid": os.getpid(), "sid": os.getsid(0),
            "env": dict(os.environ), "random": random.random(), "torch_random": torch.rand(1).item(),
            "tmp": tempfile.gettempdir(), "name": __name__, "stdin": sys.stdin.read(),
            "torch_preloaded_before_main": "torch" in sys.modules, "threads": torch.get_num_threads(),
        }), flush=True)
        print("on stderr", file=sys.stderr, flush=True)
        return 0
    if what == "exit":
        return int(argv[1])
    if what == "sleep":
        print("sleeping", flush=True)
        time.sleep(300)
        return 0
    if what == "raise":
        raise ValueError("raised in the child")
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
