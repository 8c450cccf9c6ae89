"""The fork server's template process: import a node's modules once, then fork a child per request.

`subnet.node.forkserver` (the requester side) starts `python -m subnet.node.fork_template FD` with the
import-time environment it serves; FD is its end of a SEQPACKET socket pair. A request is one JSON
message (module, args, env, cwd; at most MAX_REQUEST bytes) carrying two descriptors: the child's
output pipe and its status pipe. The reply is `{"pid": N}` (or `{"error": ...}`); when the child
exits, its status in Popen's convention (negative: the signal) goes down the status pipe, one line.
See `subnet.node.forkserver` for what a forked child shares with the template and what it does not.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import threading
from collections.abc import Sequence

from subnet.model.process_env import set_thread_pool_defaults

MAX_REQUEST = 1 << 20  # bytes of one request (argv + environment)
MAX_READY = 4096  # bytes of the "ready" message (b"ready " + the preload failures as JSON)
# modules every node process imports (torch, transformers' model base, hivemind, the hoster and the
# node assembly); an import error leaves that module to the child
PRELOAD = ("subnet.node.cli", "subnet.node.assembly", "hoster.server", "hoster.backend", "hoster.options",
           "subnet.model.blocks", "subnet.client.runtime", "transformers.modeling_utils",
           "transformers.models.llama.modeling_llama")


def _preload() -> list[str]:
    """Import PRELOAD; returns the failures (`name: error`), which the requester logs."""
    set_thread_pool_defaults()
    import importlib

    failed = []
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as e:  # the child imports it itself (and reports the error where it matters)
            failed.append(f"{name}: {e!r}"[:300])
    import gc

    gc.collect()
    gc.freeze()  # the preloaded heap is never garbage: keep collections (and copy-on-write) off it
    return failed


def _exit_code(code) -> int:
    """What `sys.exit(code)` makes the interpreter exit with."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _run_child(request: dict, out_fd: int, keep_closed: Sequence[int]) -> None:
    """In the forked child: become `python -m module args` in a new session, then exit with its status."""
    import io
    import runpy
    import traceback

    code = 1
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd in keep_closed:
            try:
                os.close(fd)
            except OSError:
                pass
        devnull = os.open(os.devnull, os.O_RDONLY)  # may itself be 0: the lifeline (stdin) was closed above
        for fd, target in ((devnull, 0), (out_fd, 1), (out_fd, 2)):
            if fd != target:
                os.dup2(fd, target)
        for fd in {devnull, out_fd} - {0, 1, 2}:
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True, write_through=unbuffered)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True, write_through=True,
                                      errors="backslashreplace")
        _reseed()
        import tempfile

        tempfile.tempdir = None  # recomputed from this child's TMPDIR on next use
        sys.path[0] = os.getcwd()  # as `python -m` puts the working directory first
        sys.argv = [request["module"], *request["args"]]
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = _exit_code(e.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = -signal.SIGINT
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        code = _finish(code)
        os._exit(code)


def _finish(code: int) -> int:
    """What interpreter shutdown does before exiting: join non-daemon threads, run atexit handlers."""
    import atexit

    try:
        for thread in threading.enumerate():
            if thread is not threading.main_thread() and not thread.daemon:
                thread.join()
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    except BaseException:
        pass
    if code < 0:  # died of a signal, as an uncaught KeyboardInterrupt makes the interpreter do
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


def _reseed() -> None:
    import random

    random.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    if "torch" in sys.modules:
        sys.modules["torch"].seed()


def serve(ctl: socket.socket, preload_failures: Sequence[str] = ()) -> None:
    """The template's loop: fork a child per request, report each child's pid and, later, its status."""
    status_fds: dict[int, int] = {}
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the select through the wakeup fd
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the requester's Ctrl-C is the requester's to handle
    ctl.sendall(b"ready " + json.dumps(list(preload_failures)).encode()[:MAX_READY - 6])
    lifeline = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([ctl, wake_r, lifeline], [], [], 5.0)
        if lifeline in ready and not os.read(lifeline, 4096):
            return  # the requester is gone
        if wake_r in ready:
            try:
                os.read(wake_r, 4096)
            except BlockingIOError:
                pass
        if ctl in ready:
            try:
                data, fds, _, _ = socket.recv_fds(ctl, MAX_REQUEST, 2)
            except OSError:
                return
            if not data:
                return
            _fork_one(ctl, data, fds, status_fds, [ctl.fileno(), wake_r, wake_w, lifeline])
        _reap(status_fds)


def _checked(request) -> dict:
    """A request's shape, checked before anything forks: module, args, env (str -> str) and cwd."""
    def strs(xs) -> bool:
        return isinstance(xs, list) and all(isinstance(x, str) for x in xs)

    if not (isinstance(request, dict) and isinstance(request.get("module"), str) and strs(request.get("args"))
            and isinstance(request.get("cwd"), str) and isinstance(request.get("env"), dict)
            and strs(list(request["env"])) and strs(list(request["env"].values()))):
        raise ValueError("a request is {module: str, args: [str], env: {str: str}, cwd: str}")
    return request


def _fork_one(ctl: socket.socket, data: bytes, fds: list[int], status_fds: dict[int, int],
              own_fds: list[int]) -> None:
    if len(fds) != 2:
        for fd in fds:
            os.close(fd)
        ctl.sendall(json.dumps({"error": "expected 2 descriptors"}).encode())
        return
    out_fd, status_fd = fds
    try:
        request = _checked(json.loads(data))
        pid = os.fork()
    except Exception as e:
        os.close(out_fd)
        os.close(status_fd)
        ctl.sendall(json.dumps({"error": repr(e)[:500]}).encode())
        return
    if pid == 0:
        _run_child(request, out_fd, [status_fd, *status_fds.values(), *own_fds])
    os.close(out_fd)
    status_fds[pid] = status_fd
    ctl.sendall(json.dumps({"pid": pid}).encode())


def _reap(status_fds: dict[int, int]) -> None:
    """Collect exited children and hand each one's status to its requester (Popen's convention)."""
    while status_fds:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        fd = status_fds.pop(pid, None)
        if fd is not None:
            try:
                os.write(fd, f"{os.waitstatus_to_exitcode(status)}\n".encode())
            except OSError:
                pass
            os.close(fd)


def main() -> None:
    ctl = socket.socket(fileno=int(sys.argv[1]))
    serve(ctl, _preload())


if __name__ == "__main__":
    main()
