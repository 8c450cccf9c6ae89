"""Configuration: precedence (TOML file < environment MESH_NODE_* < flags) and typos named with a suggestion."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from subnet.node import config
from subnet.node.cli import _build_parser, apply_node_config
from subnet.node.errors import UserError

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
        ("[api]\nprot = 1\n", {}, "unknown key 'prot' in \\[api\\] \\(did you mean 'port'\\?\\)"),
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


@pytest.mark.parametrize(
    "text,message",
    [
        # [node] and the top level apply to every command: a key no command knows is a typo.
        ("[node]\ncach_tokens = 1\n", "unknown key 'cach_tokens' in [node] (did you mean 'cache_tokens'?)"),
        ("prot = 1\n", "unknown key 'prot' at the top level (did you mean 'port'?)"),
        ("[node]\ninital-peers = []\n", "unknown key 'inital-peers' in [node] (did you mean 'initial_peers'?)"),
        ("[apii]\nport = 1\n", "unknown section [apii] (did you mean [api]?)"),
        ("[hoster]\nblocks = '0:2'\n", "unknown section [hoster]"),
        ("[api]\nlocl = true\n", "unknown key 'locl' in [api] (did you mean 'local'?)"),
    ],
)
def test_typos_name_the_key_and_the_closest_valid_one(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(UserError) as e:
        config.parse_args(_parser(), [], command="api", environ={"MESH_NODE_CONFIG": str(path)})
    assert str(e.value) == f"config file {path}: {message}"


def test_shared_keys_of_other_commands_are_not_typos(tmp_path):
    """`max_tokens` (chat) and `cache_tokens` (node) in [node] are valid for `api`, which ignores them."""
    path = _write(tmp_path, 'log_level = "DEBUG"\n[node]\nmax_tokens = 5\ncache_tokens = 64\nport = 1234\n'
                            "[chat]\ntemperature = 0\n")
    a = config.parse_args(_parser(), [], command="api", environ={"MESH_NODE_CONFIG": str(path)})
    assert a.port == 1234 and not hasattr(a, "max_tokens") and not hasattr(a, "cache_tokens")


def test_node_accepts_api_keys_in_node_table_but_not_typos(tmp_path):
    """`mesh-node --hoster` reads [node] like every command: other commands' keys pass, typos do not."""
    def node_args(text: str):
        path = _write(tmp_path, text)
        argv = ["--config", str(path)]
        return apply_node_config(_build_parser(), _build_parser().parse_known_args(argv)[0], argv)

    args = node_args('[node]\nhoster = true\nmodel = "m"\nport = 8000\nmax_tokens = 5\n')
    assert args.hoster is True and args.model == "m" and not hasattr(args, "port")
    with pytest.raises(UserError, match=r"unknown key 'hostr' in \[node\] \(did you mean 'hoster'\?\)"):
        node_args("[node]\nhostr = true\n")


@pytest.mark.parametrize(
    "argv,text,message",
    [
        (["--hoster"], "[node]\ncach_tokens = 8\n",
         "unknown key 'cach_tokens' in [node] (did you mean 'cache_tokens'?)"),
        (["api"], "[api]\nprot = 8000\n", "unknown key 'prot' in [api] (did you mean 'port'?)"),
        (["chat"], "[chatt]\nurl = 'http://x'\n", "unknown section [chatt] (did you mean [chat]?)"),
    ],
)
def test_config_typo_is_one_line_from_the_cli(tmp_path, argv, text, message):
    path = _write(tmp_path, text)
    r = subprocess.run([sys.executable, "-m", "subnet.node.cli", *argv], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "MESH_NODE_CONFIG": str(path)})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"mesh-node: error: config file {path}: {message}"]
