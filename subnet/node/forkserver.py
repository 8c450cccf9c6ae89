"""Start `python -m MODULE ARGS` node processes from a template that already imported torch and co.

A node process spends about 2.5 s of CPU importing torch, transformers and hivemind before it does
anything else (2 cores here). A local subnet starts many of them: `mesh-node devnet` one per node,
the test suite ~140 hosters and ~60 `mesh-node` processes per run (eleventh session: the hoster
processes alone took 737 s of the suite's ~2200 s of CPU). A fork server pays the imports once: a
template process (`python -m subnet.node.fork_template`) imports the modules every node needs
(`fork_template.PRELOAD`), then forks one child per request. Each child is a real OS process in a new session
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
`mesh-node devnet` starts its nodes this way unless MESH_NODE_FORKSERVER=0; elsewhere it is opt-in with
MESH_NODE_FORKSERVER=1 (the test suite sets it).
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

from subnet.model.process_env import DEFAULTS as THREAD_POOL_DEFAULTS
from subnet.node.errors import ConfigError
from subnet.node.fork_template import MAX_READY, MAX_REQUEST

log = logging.getLogger(__name__)

ENV_SWITCH = "MESH_NODE_FORKSERVER"
IMPORT_ENV_PREFIXES = ("PYTHON", "OMP_", "KMP_", "GOMP_", "MKL_", "OPENBLAS_", "GOTO", "DNNL_", "ONEDNN_",
                       "TORCH", "PYTORCH_", "CUDA", "LD_", "MALLOC_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_",
                       "TOKENIZERS_", "XDG_", "TORCHINDUCTOR_")
IMPORT_ENV_NAMES = ("HOME", "PATH", "LANG", "LC_ALL", "LC_CTYPE")  # TMPDIR: the child resets tempfile's cache
MAX_TEMPLATES = 4  # import-time environments with a template per requester; others start fresh interpreters
START_TIMEOUT = 180.0  # seconds for a template to import its modules


def enabled(default: bool = False) -> bool:
    """Whether node processes start from a template: MESH_NODE_FORKSERVER=1/on/true or 0/off/false,
    else `default` (`mesh-node devnet` defaults to on; a lone `ManagedProcess` to off)."""
    raw = os.environ.get(ENV_SWITCH, "").strip().lower()
    if raw in ("1", "on", "true"):
        return True
    if raw in ("0", "off", "false"):
        return False
    if raw:  # a typo must not silently pick the default
        raise ConfigError(f"{ENV_SWITCH}={raw!r}: use 1/on/true or 0/off/false")
    return default


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
            [sys.executable, "-m", "subnet.node.fork_template", str(theirs.fileno())], env=dict(env),
            stdin=subprocess.PIPE, pass_fds=(theirs.fileno(),), start_new_session=True,
            # what the imports print (torchao's missing CUDA kernels, ...) is not the requester's output
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        theirs.close()
        ours.settimeout(START_TIMEOUT)
        try:
            ready = ours.recv(MAX_READY)
            if not ready.startswith(b"ready "):
                raise RuntimeError("no ready message")
            failed = json.loads(ready[6:])
        except (OSError, RuntimeError, ValueError) as e:
            self.close()
            raise RuntimeError(f"fork server did not start: {e!r}") from e
        ours.settimeout(None)
        if failed:  # its children import those modules themselves
            log.warning("forkserver_preload_failed modules=%s", "; ".join(map(str, failed))[:1000])
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
