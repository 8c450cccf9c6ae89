"""Start `python -m MODULE ARGS` node processes from a template that already imported torch and co.

A node process spends about 2.5 s of CPU importing torch, transformers and hivemind before it does
anything else (2 cores here). A local subnet starts many of them: `mesh-node devnet` one per node,
the test suite ~140 hosters and ~60 `mesh-node` processes per run (eleventh session: the hoster
processes alone took 737 s of the suite's ~2200 s of CPU). A fork server pays the imports once: a
template process (`python -m subnet.node.forkserver`) imports the modules every node needs
(`PRELOAD`), then forks one child per request. Each child is a real OS process in a new session
(its own process group, as `subprocess.Popen(start_new_session=True)` gives), with the requested
environment, working directory and output pipe, and runs the module as `python -m` would (`runpy`);
its exit status, or the signal that killed it, comes back to the requester through a pipe of its own.

What a forked child cannot change is what its libraries read while being imported (thread-pool
variables, PYTHONPATH, the Hugging Face cache paths, ...). So the template is started with the
requester's import-time environment (`import_env`: the variables named by IMPORT_ENV_PREFIXES /
IMPORT_ENV_NAMES), and a request whose import-time environment differs goes to another template,
one per distinct environment, each started on first use (at most MAX_TEMPLATES per requester; past
that, and if a template cannot start, the node starts as a fresh interpreter). Each child re-seeds Python's, NumPy's and
torch's random generators (forked children would otherwise share the template's state); str/bytes
hashing keeps the template's random seed (it only has to be unknown to others, not distinct).

The template never runs a parallel op itself, so no OpenMP pool exists when it forks (fork keeps only
the calling thread), and it exits when its requester does (its stdin is the requester's pipe): children
then live on, as children started with `start_new_session=True` do. `ForkedProcess` gives the
requester the part of the `subprocess.Popen` interface that `subnet.node.procs.ManagedProcess` uses.
Opt in with MESH_NODE_FORKSERVER=1 (the test suite does); without it nodes start as fresh interpreters.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

from subnet.model.process_env import DEFAULTS as THREAD_POOL_DEFAULTS, set_thread_pool_defaults

log = logging.getLogger(__name__)

ENV_SWITCH = "MESH_NODE_FORKSERVER"
# modules every node process imports (torch, transformers' model base, hivemind, the hoster and the
# node assembly); an import error leaves that module to the child
PRELOAD = ("subnet.node.cli", "subnet.node.assembly", "hoster.server", "hoster.backend", "hoster.options",
           "subnet.model.blocks", "subnet.client.runtime", "transformers.modeling_utils",
           "transformers.models.llama.modeling_llama")
IMPORT_ENV_PREFIXES = ("PYTHON", "OMP_", "KMP_", "GOMP_", "MKL_", "OPENBLAS_", "GOTO", "DNNL_", "ONEDNN_",
                       "TORCH", "PYTORCH_", "CUDA", "LD_", "MALLOC_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_",
                       "TOKENIZERS_", "XDG_", "TORCHINDUCTOR_")
IMPORT_ENV_NAMES = ("HOME", "PATH", "LANG", "LC_ALL", "LC_CTYPE")  # TMPDIR: the child resets tempfile's cache
MAX_TEMPLATES = 4  # import-time environments with a template per requester; others start fresh interpreters
MAX_REQUEST = 1 << 20  # bytes of one request (argv + environment)
START_TIMEOUT = 180.0  # seconds for a template to import its modules


def enabled() -> bool:
    """Whether node processes start from a template (MESH_NODE_FORKSERVER=1/on/true)."""
    return os.environ.get(ENV_SWITCH, "").strip().lower() in ("1", "on", "true")


def module_of(argv: Sequence[str]) -> tuple[str, list[str]] | None:
    """(module, args) when `argv` is `[this python, "-m", module, *args]`, which a template can run."""
    if len(argv) >= 3 and argv[1] == "-m" and os.path.realpath(argv[0]) == os.path.realpath(sys.executable):
        return argv[2], list(argv[3:])
    return None


def import_env(env: Mapping[str, str]) -> dict[str, str]:
    """The part of an environment that libraries read while being imported (see the module docstring),
    after the thread-pool defaults every node entry point sets first."""
    full = {**THREAD_POOL_DEFAULTS, **env}
    return {k: v for k, v in sorted(full.items()) if k.startswith(IMPORT_ENV_PREFIXES) or k in IMPORT_ENV_NAMES}


# --- requester side ---------------------------------------------------------------------------------


class ForkedProcess:
    """A child of a template, as much of `subprocess.Popen` as managing a node needs."""

    def __init__(self, args: list[str], pid: int, status_fd: int, stdout=None):
        self.args, self.pid, self.stdout = args, pid, stdout
        self.returncode: int | None = None
        self._status_fd = status_fd
        self._orphan = False
        self._lock = threading.Lock()

    def _collect(self, timeout: float | None) -> int | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if self._orphan:  # the template died first: the child is init's, its status lost
                if _gone(self.pid):
                    self.returncode = -signal.SIGKILL
                    break
                if left == 0.0:
                    return None
                time.sleep(0.1 if left is None else min(0.1, left))
                continue
            ready, _, _ = select.select([self._status_fd], [], [], left)  # the fd stays open until __del__
            if not ready:
                return None
            with self._lock:
                if self.returncode is None and not self._orphan:
                    self._read_status()
        return self.returncode

    def _read_status(self) -> None:
        data = b""
        while not data.endswith(b"\n"):
            chunk = os.read(self._status_fd, 64)
            if not chunk:
                break
            data += chunk
        try:
            self.returncode = int(data.strip())
        except ValueError:  # EOF without a status: the template died before its child
            self._orphan = True

    def __del__(self) -> None:
        try:
            os.close(self._status_fd)
        except (OSError, AttributeError):
            pass

    def poll(self) -> int | None:
        return self._collect(0)

    def wait(self, timeout: float | None = None) -> int:
        code = self._collect(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _gone(pid: int) -> bool:
    """Whether an orphaned child has exited (gone, or a zombie under an init that does not reap)."""
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


class Template:
    """One template process for one import-time environment."""

    def __init__(self, env: Mapping[str, str]):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock = ours
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "subnet.node.forkserver", str(theirs.fileno())], env=dict(env),
            stdin=subprocess.PIPE, pass_fds=(theirs.fileno(),), start_new_session=True)
        theirs.close()
        ours.settimeout(START_TIMEOUT)
        try:
            if ours.recv(16) != b"ready":
                raise RuntimeError("fork server did not start")
        except (OSError, RuntimeError) as e:
            self.close()
            raise RuntimeError(f"fork server did not start: {e!r}") from e
        ours.settimeout(None)
        self.children: list[ForkedProcess] = []
        self.last_used = time.monotonic()

    def busy(self) -> bool:
        """Whether a child of this template still runs (its status will come through the template)."""
        self.children = [c for c in self.children if c.poll() is None]
        return bool(self.children)

    def spawn(self, module: str, args: list[str], env: Mapping[str, str], cwd: str | None = None) -> ForkedProcess:
        """Fork a child that runs `python -m module *args`; its stdout and stderr go to one text pipe."""
        request = json.dumps({"module": module, "args": list(args), "env": dict(env),
                              "cwd": cwd or os.getcwd()}).encode()
        if len(request) > MAX_REQUEST:
            raise ValueError(f"fork request of {len(request)} bytes exceeds {MAX_REQUEST}")
        out_r, out_w = os.pipe()
        status_r, status_w = os.pipe()
        try:
            with self._lock:
                socket.send_fds(self._sock, [request], [out_w, status_w])
                reply = json.loads(self._sock.recv(4096) or b"{}")
        except BaseException:
            for fd in (out_r, status_r):
                os.close(fd)
            raise
        finally:
            os.close(out_w)
            os.close(status_w)
        if "pid" not in reply:
            os.close(out_r)
            os.close(status_r)
            raise OSError(f"fork server could not start {module}: {reply.get('error', 'no reply')}")
        stdout = open(out_r, encoding="utf-8", errors="replace")  # text lines, as Popen(text=True) gives
        child = ForkedProcess([sys.executable, "-m", module, *args], reply["pid"], status_r, stdout)
        self.children.append(child)
        self.last_used = time.monotonic()
        return child

    def close(self) -> None:
        """Let the template exit (children keep running: they are in sessions of their own)."""
        try:
            self._sock.close()
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


_templates: dict[tuple, Template] = {}
_templates_lock = threading.Lock()


def template_for(env: Mapping[str, str]) -> Template | None:
    """The template serving `env`'s import-time environment (started on first use; at MAX_TEMPLATES, the
    least recently used idle one makes room), or None when MAX_TEMPLATES others all have children
    running (each template holds ~0.5 GB of imported modules)."""
    key = tuple(import_env(env).items())
    with _templates_lock:
        template = _templates.get(key)
        if template is not None and template.proc.poll() is not None:
            del _templates[key]  # exited (killed?): its children still report through their own pipes
            template = None
        if template is None:
            if len(_templates) >= MAX_TEMPLATES:
                idle = sorted((t.last_used, k) for k, t in _templates.items() if not t.busy())
                if not idle:
                    return None
                _templates.pop(idle[0][1]).close()  # the least recently used one with no child running
            try:
                template = _templates[key] = Template(env)
            except RuntimeError as e:  # the caller starts a fresh interpreter instead
                log.warning("forkserver_unavailable error=%r", str(e)[:200])
                return None
        return template


def shutdown() -> None:
    """Stop every template this process started (its children keep running)."""
    with _templates_lock:
        for template in _templates.values():
            template.close()
        _templates.clear()


# --- template side ----------------------------------------------------------------------------------


def _preload() -> None:
    set_thread_pool_defaults()
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as e:  # the child imports it itself (and reports the error where it matters)
            print(f"forkserver: preload {name} failed: {e!r}", file=sys.stderr)
    import gc

    gc.collect()
    gc.freeze()  # the preloaded heap is never garbage: keep collections (and copy-on-write) off it


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


def serve(ctl: socket.socket) -> None:
    """The template's loop: fork a child per request, report each child's pid and, later, its status."""
    status_fds: dict[int, int] = {}
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the select through the wakeup fd
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the requester's Ctrl-C is the requester's to handle
    ctl.sendall(b"ready")
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


def _fork_one(ctl: socket.socket, data: bytes, fds: list[int], status_fds: dict[int, int],
              own_fds: list[int]) -> None:
    if len(fds) != 2:
        for fd in fds:
            os.close(fd)
        ctl.sendall(json.dumps({"error": "expected 2 descriptors"}).encode())
        return
    out_fd, status_fd = fds
    try:
        request = json.loads(data)
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
    _preload()
    serve(ctl)


if __name__ == "__main__":
    main()
