"""Node processes forked from a pre-imported template (subnet/node/forkserver.py) behave as fresh
`python -m` processes do: own session, environment, working directory, output, exit status, randomness."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from subnet.node import forkserver
from subnet.node.procs import ManagedProcess, python_module_argv

CHILD = "tests.subnet.node.fork_child"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}


def _spawn(*args: str, env: dict[str, str] | None = None, cwd: str = REPO) -> forkserver.ForkedProcess:
    env = env or _env()
    template = forkserver.template_for(env)
    assert template is not None
    return template.spawn(CHILD, list(args), env, cwd)


def _report(proc: forkserver.ForkedProcess) -> tuple[dict, str]:
    out = proc.stdout.read()
    assert proc.wait(60) == 0, out
    first, rest = out.split("\n", 1)
    return json.loads(first), rest


def test_module_of_recognises_only_this_interpreter_running_a_module():
    assert forkserver.module_of([sys.executable, "-m", "hoster", "--model", "m"]) == ("hoster", ["--model", "m"])
    assert forkserver.module_of(["/usr/bin/env", "-m", "hoster"]) is None
    assert forkserver.module_of([sys.executable, "script.py"]) is None
    assert forkserver.module_of(["mesh-node", "devnet"]) is None


def test_the_switch_overrides_each_callers_default(monkeypatch):
    monkeypatch.delenv(forkserver.ENV_SWITCH, raising=False)
    assert forkserver.enabled(default=True) and not forkserver.enabled()
    monkeypatch.setenv(forkserver.ENV_SWITCH, "0")
    assert not forkserver.enabled(default=True)
    monkeypatch.setenv(forkserver.ENV_SWITCH, "on")
    assert forkserver.enabled()
    monkeypatch.setenv(forkserver.ENV_SWITCH, "yes")
    with pytest.raises(ValueError, match="MESH_NODE_FORKSERVER='yes'"):
        forkserver.enabled()


def test_a_forked_child_is_its_own_process_with_the_requested_env_cwd_and_output(tmp_path):
    env = _env(FORK_TEST_VAR="yes", PYTHONPATH=REPO)
    env.pop("FORK_TEST_ONLY_IN_PARENT", None)
    os.environ["FORK_TEST_ONLY_IN_PARENT"] = "1"  # in the requester's environment, not in the request
    try:
        proc = _spawn("report", "x", env=env, cwd=str(tmp_path))
    finally:
        del os.environ["FORK_TEST_ONLY_IN_PARENT"]
    report, rest = _report(proc)
    assert report["pid"] == proc.pid and report["sid"] == proc.pid  # a new session: killpg(pid) reaches its group
    assert report["argv"] == ["report", "x"] and report["name"] == "__main__"
    assert report["argv0"].endswith("fork_child.py")
    assert report["cwd"] == str(tmp_path)
    assert report["env"] == env  # exactly the request's environment
    assert report["stdin"] == ""  # /dev/null
    assert report["torch_preloaded_before_main"]
    assert rest.strip() == "on stderr"  # stderr goes to the same pipe


def test_forked_children_do_not_share_random_state(tmp_path):
    a, _ = _report(_spawn("report"))
    b, _ = _report(_spawn("report"))
    assert a["random"] != b["random"] and a["torch_random"] != b["torch_random"]


def test_tmpdir_is_the_childs_own(tmp_path):
    report, _ = _report(_spawn("report", env=_env(TMPDIR=str(tmp_path))))
    assert report["tmp"] == str(tmp_path)


def test_a_different_import_time_environment_gets_its_own_template():
    one, two = _env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"), _env(OMP_NUM_THREADS="2", MKL_NUM_THREADS="2")
    assert forkserver.template_for(one) is not forkserver.template_for(two)
    assert forkserver.template_for(one) is forkserver.template_for({**one, "MESH_X": "runtime only"})
    r1, _ = _report(_spawn("report", env=one))
    r2, _ = _report(_spawn("report", env=two))
    assert (r1["threads"], r2["threads"]) == (1, 2)


def test_a_malformed_request_is_refused_without_forking():
    template = forkserver.template_for(_env())
    r, w = os.pipe()
    s_r, s_w = os.pipe()
    try:
        with template._lock:
            socket.send_fds(template._sock, [json.dumps({"module": "x", "args": [1], "env": {}, "cwd": "/"}).encode()],
                            [w, s_w])
            reply = json.loads(template._sock.recv(4096))
    finally:
        for fd in (r, w, s_r, s_w):
            os.close(fd)
    assert "pid" not in reply and "a request is" in reply["error"]
    assert _spawn("exit", "0").wait(60) == 0  # the template still serves


def test_exit_statuses_are_those_of_a_fresh_interpreter():
    assert _spawn("exit", "3").wait(60) == 3
    proc = _spawn("raise")
    out = proc.stdout.read()
    assert proc.wait(60) == 1 and "ValueError: raised in the child" in out
    proc = _spawn("sleep")
    assert proc.stdout.readline().strip() == "sleeping"
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(0.2)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == -signal.SIGTERM
    proc = _spawn("sleep")
    assert proc.stdout.readline().strip() == "sleeping"
    proc.kill()
    assert proc.wait(30) == -signal.SIGKILL
    proc.kill()  # after exit: no error, as Popen


def test_managed_process_forks_when_enabled_and_stops_cleanly(tmp_path):
    argv = python_module_argv(CHILD, "sleep")
    fresh = ManagedProcess("fresh", argv, log_path=tmp_path / "fresh.log", ready_prefix="sleeping", fork=False)
    forked = ManagedProcess("forked", argv, log_path=tmp_path / "forked.log", ready_prefix="sleeping", fork=True)
    try:
        assert fresh.wait_ready(60) == forked.wait_ready(60) == "sleeping"
        assert isinstance(fresh.proc, subprocess.Popen) and isinstance(forked.proc, forkserver.ForkedProcess)
        assert forked.alive
    finally:
        codes = fresh.stop(), forked.stop()
    assert codes == (-signal.SIGTERM, -signal.SIGTERM)
    assert not forked.alive


def test_idle_templates_make_room_and_busy_ones_stay(monkeypatch):
    monkeypatch.setattr(forkserver, "MAX_TEMPLATES", 1)
    forkserver.shutdown()
    first = _env(LANG="C")
    busy = _spawn("sleep", env=first)
    assert busy.stdout.readline().strip() == "sleeping"
    assert forkserver.template_for(_env(LANG="C.UTF-8")) is None  # the only slot runs a child
    busy.kill()
    assert busy.wait(30) == -signal.SIGKILL
    old = forkserver.template_for(first)
    new = forkserver.template_for(_env(LANG="C.UTF-8"))  # the idle one made room
    assert new is not None and new is not old and old.proc.poll() is not None
    report, _ = _report(new.spawn(CHILD, ["report"], _env(LANG="C.UTF-8"), REPO))
    assert report["env"]["LANG"] == "C.UTF-8"


def test_a_dead_template_is_replaced_and_a_failed_fork_starts_a_fresh_process(tmp_path, monkeypatch):
    env = _env(LC_ALL="C")  # a template of its own
    template = forkserver.template_for(env)
    template.proc.kill()
    template.proc.wait(30)
    argv = python_module_argv(CHILD, "sleep")
    forked = ManagedProcess("a", argv, log_path=tmp_path / "a.log", env=env, ready_prefix="sleeping", fork=True)

    def broken(*args, **kwargs):
        raise BrokenPipeError("the template died under us")

    monkeypatch.setattr(forkserver.Template, "spawn", broken)
    fresh = ManagedProcess("b", argv, log_path=tmp_path / "b.log", env=env, ready_prefix="sleeping", fork=True)
    try:
        assert forked.wait_ready(60) == fresh.wait_ready(60) == "sleeping"
        assert isinstance(forked.proc, forkserver.ForkedProcess)  # from a new template
        assert forkserver.template_for(env) is not template
        assert isinstance(fresh.proc, subprocess.Popen)
    finally:
        forked.stop(), fresh.stop()


def test_a_child_outlives_its_template_and_is_still_waited_for():
    env = _env(FORK_TEST_TEMPLATE="own")  # not an import-time variable: same template as others
    env["LC_CTYPE"] = "C.UTF-8" if os.environ.get("LC_CTYPE") != "C.UTF-8" else "C"  # its own template
    template = forkserver.template_for(env)
    proc = template.spawn(CHILD, ["sleep"], env, REPO)
    assert proc.stdout.readline().strip() == "sleeping"
    template.close()
    assert template.proc.poll() is not None
    time.sleep(0.2)
    assert proc.poll() is None  # alive, though its template is gone
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL
