"""Configuration precedence: TOML file < environment (MESH_NODE_*) < flags."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from subnet.node import config
from subnet.node.cli import UserError

MESH_NODE = str(Path(sys.executable).with_name("mesh-node"))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("--config")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--initial-peers", nargs="*", default=[])
    p.add_argument("--local", action="store_true")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    return p


def _write(tmp_path, text: str):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_file_then_env_then_flags(tmp_path):
    path = _write(tmp_path, 'port = 1000\nhost = "0.0.0.0"\n[node]\ninitial-peers = ["/a", "/b"]\n'
                            "[api]\nport = 2000\nlocal = true\n")
    env = {"MESH_NODE_CONFIG": str(path)}
    a = config.parse_args(_parser(), [], command="api", environ=env)
    assert (a.port, a.host, a.initial_peers, a.local) == (2000, "0.0.0.0", ["/a", "/b"], True)
    a = config.parse_args(_parser(), [], command="chat", environ=env)  # [api] does not apply
    assert (a.port, a.local) == (1000, False)
    env["MESH_NODE_PORT"] = "3000"
    env["MESH_NODE_INITIAL_PEERS"] = "/x,/y /z"
    env["MESH_NODE_LOCAL"] = "false"
    a = config.parse_args(_parser(), [], command="api", environ=env)
    assert (a.port, a.initial_peers, a.local) == (3000, ["/x", "/y", "/z"], False)
    a = config.parse_args(_parser(), ["--port", "4000", "--initial-peers", "/f"], command="api", environ=env)
    assert (a.port, a.initial_peers, a.host) == (4000, ["/f"], "0.0.0.0")
    # a flag equal to the default still wins over file and environment
    a = config.parse_args(_parser(), ["--port", "8000"], command="api", environ=env)
    assert a.port == 8000


def test_resolve_for_none_defaults(tmp_path):
    p = argparse.ArgumentParser()
    p.add_argument("--config")
    p.add_argument("--port", type=int)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--local", action="store_true", default=None)
    path = _write(tmp_path, "[chat]\nmax_tokens = 77\nport = 1\n")
    args = p.parse_args(["--config", str(path), "--port", "5"])
    config.resolve(p, args, command="chat", defaults={"port": 9, "local": False, "max_tokens": 256},
                   environ={"MESH_NODE_MAX_TOKENS": "88"})
    assert (args.port, args.max_tokens, args.local) == (5, 88, False)


@pytest.mark.parametrize(
    "text,env,match",
    [
        ("port = 'abc'\n", {}, "port"),
        ("[api]\nprot = 1\n", {}, "unknown setting 'prot'"),
        ("dtype = 'int4'\n", {}, "one of"),
        ("port = [1]\n", {}, "single value"),
        ("x = \n", {}, "not valid TOML"),
        ("", {"MESH_NODE_LOCAL": "maybe"}, "true or false"),
    ],
)
def test_bad_values_are_one_line_user_errors(tmp_path, text, env, match):
    path = _write(tmp_path, text)
    with pytest.raises(UserError, match=match):
        config.parse_args(_parser(), [], command="api", environ={"MESH_NODE_CONFIG": str(path), **env})


def test_missing_file_is_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        config.parse_args(_parser(), ["--config", str(tmp_path / "nope.toml")], command="api", environ={})


def test_config_init_writes_valid_commented_template(tmp_path):
    path = tmp_path / "sub" / "mesh.toml"
    run = [MESH_NODE, "config", "init", "--path", str(path)]
    r = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    data = tomllib.loads(path.read_text())
    assert set(data) >= {"node", "api", "chat", "devnet"}
    assert "# initial_peers" in path.read_text()
    again = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert subprocess.run(run + ["--force"], capture_output=True, timeout=60).returncode == 0
