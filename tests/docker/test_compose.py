"""docker/: what the compose subnet exposes by default, the build context, the GPU variant.

No Docker engine is needed: the compose files are read as YAML with Docker Compose's
variable interpolation done here (`${VAR:-default}`, `$$`), the api service's start-up
command runs under `sh` with a stand-in `mesh-node`, and `.dockerignore` is matched with
Docker's rules (patterns from the context root, `**`, a pattern also excludes what is
under a matching folder, the last matching line wins). When the Docker CLI has the compose
plugin, `docker compose config` (which needs no engine either) is checked as well.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml  # PyYAML: installed with the project's dependencies (transformers, hivemind)

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
COMPOSE_GPU = DOCKER / "compose.gpu.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
LOOPBACK = "127.0.0.1"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


# ---- Docker Compose semantics, as far as these files use them ------------------------------

_VAR = re.compile(
    r"\$(?:\$"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?-)?(?P<default>[^}]*)\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value, env: dict[str, str]):
    """Compose's interpolation of `value` (recursively) with the shell environment `env`."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("bare")
        op = m.group("op")
        if op == ":-":
            return env.get(name) or m.group("default")
        if op == "-":
            return env.get(name, m.group("default"))
        return env.get(name, "")

    return _VAR.sub(sub, value)


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def published_ports(compose: dict, env: dict[str, str]) -> list[tuple[str, str, str]]:
    """(service, host ip or "" for every interface, container port) of every published port."""
    out = []
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            port = interpolate(port, env)
            if isinstance(port, dict):  # long syntax
                out.append((name, port.get("host_ip", ""), str(port["target"])))
                continue
            spec = str(port).split("/")[0]
            if spec.startswith("["):  # [ipv6]:host:container
                host_ip, rest = spec[1:].split("]:", 1)
                out.append((name, host_ip, rest.split(":")[-1]))
                continue
            parts = spec.split(":")
            out.append((name, parts[0] if len(parts) == 3 else "", parts[-1]))
    return out


def container_env(service: dict, host_env: dict[str, str]) -> dict[str, str]:
    env = interpolate(service.get("environment", {}), host_env)
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def ignored(path: str, patterns: list[str]) -> bool:
    """Would Docker leave `path` (relative to the context root) out of the build context?"""
    parts = path.split("/")
    result = False
    for line in patterns:
        negate = line.startswith("!")
        pattern = os.path.normpath(line[1:] if negate else line).lstrip("/")
        rx = re.compile(_glob_regex(pattern))
        # a pattern matches the path itself or any folder above it
        if any(rx.fullmatch("/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            result = not negate
    return result


def _glob_regex(pattern: str) -> str:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            j = pattern.index("]", i)
            out, i = out + pattern[i:j + 1], j + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out


def dockerignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def copy_sources() -> list[str]:
    """Context paths the Dockerfile COPYs (not from other stages)."""
    sources = []
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


# ---- published ports -----------------------------------------------------------------------


def test_every_published_port_binds_loopback_by_default():
    ports = published_ports(load(COMPOSE), env={})
    assert {(s, p) for s, _, p in ports} >= {("api", "8000"), ("chain", "9944")}
    exposed = [(s, ip or "all interfaces", p) for s, ip, p in ports if ip != LOOPBACK]
    assert not exposed, f"published beyond 127.0.0.1 by default: {exposed}"


def test_each_bind_address_is_a_documented_variable():
    """Exposing a port is a per-port choice: a variable with a loopback default, named in the docs."""
    compose_text = COMPOSE.read_text()
    header = compose_text[:compose_text.index("\nx-")]
    readme = (ROOT / "README.md").read_text()
    for name, service in load(COMPOSE)["services"].items():
        for port in service.get("ports", []):
            m = re.fullmatch(r"\$\{(\w+):-127\.0\.0\.1\}:(\d+):(\d+)", str(port))
            assert m, f"{name}: port {port!r} should look like ${{VAR:-127.0.0.1}}:HOST:CONTAINER"
            var = m.group(1)
            assert var in header, f"{var} is not explained in the compose file's header"
            assert var in readme, f"{var} is not explained in README.md"
            chosen = published_ports({"services": {name: {"ports": [port]}}}, {var: "0.0.0.0"})
            assert chosen == [(name, "0.0.0.0", m.group(3))]


def _run_api_command(tmp_path: Path, host_env: dict[str, str]) -> subprocess.CompletedProcess:
    """The api service's start-up command under sh, with a stand-in `mesh-node` that prints its argv."""
    service = load(COMPOSE)["services"]["api"]
    assert service["entrypoint"] == ["sh", "-c"]
    command = interpolate(service["command"][0], host_env)
    subnet_env = tmp_path / "subnet.env"
    subnet_env.write_text("SUBNET_ID=1\nINITIAL_PEERS=/dns4/bootstrap/tcp/31337/p2p/x\nCHAIN=http://chain:9944\n"
                          "MODEL=/models/model\n")
    assert "/keys/subnet.env" in command
    command = command.replace("/keys/subnet.env", str(subnet_env))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "mesh-node"
    fake.write_text('#!/bin/sh\necho "mesh-node $*"\necho "keys=$MESH_NODE_API_KEYS"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", **container_env(service, host_env)}
    return subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True, timeout=30)


def test_api_starts_on_loopback_without_keys(tmp_path):
    done = _run_api_command(tmp_path, {})
    assert done.returncode == 0, done.stderr
    assert "mesh-node api --host 0.0.0.0 --port 8000 --model /models/model" in done.stdout
    assert "keys=\n" in done.stdout


def test_api_refuses_a_public_address_without_keys(tmp_path):
    done = _run_api_command(tmp_path, {"MESH_API_BIND": "0.0.0.0"})
    assert done.returncode == 1
    assert "MESH_API_KEYS" in done.stderr
    assert "mesh-node" not in done.stdout


def test_api_on_a_public_address_with_keys_passes_them_to_mesh_node(tmp_path):
    done = _run_api_command(tmp_path, {"MESH_API_BIND": "0.0.0.0", "MESH_API_KEYS": "k1,k2"})
    assert done.returncode == 0, done.stderr
    assert "mesh-node api" in done.stdout and "keys=k1,k2" in done.stdout


# ---- build context -------------------------------------------------------------------------


def test_build_context_is_the_repository_root():
    for name, service in load(COMPOSE)["services"].items():
        build = service.get("build")
        if build:
            assert (DOCKER / build["context"]).resolve() == ROOT, name
            assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE, name
    assert DOCKERIGNORE.is_file()


@pytest.mark.parametrize("path", [
    ".venv/bin/python", ".venv", ".git/HEAD", ".git", "subnet/__pycache__/cli.cpython-311.pyc",
    "hoster/server.pyc", ".pytest_cache/v/cache", ".hypothesis/examples/x", "mesh_node.egg-info/PKG-INFO",
    "chain.db", "var/devnet/chain.db-wal", "var/keys/node.key",
])
def test_dockerignore_keeps_local_state_out(path):
    assert ignored(path, dockerignore_patterns())


def test_dockerignore_keeps_what_the_dockerfile_copies():
    sources = copy_sources()
    assert {"pyproject.toml", "README.md", "subnet", "hoster"} <= set(sources)
    patterns = dockerignore_patterns()
    for src in sources:
        assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
        assert not ignored(src, patterns), f".dockerignore drops {src}, which the Dockerfile copies"
        if (ROOT / src).is_dir():
            for f in (ROOT / src).rglob("*.py"):
                rel = f.relative_to(ROOT).as_posix()
                assert not ignored(rel, patterns), f".dockerignore drops {rel}"
    # the dashboard's static files are package data
    static = [p.relative_to(ROOT).as_posix() for p in (ROOT / "subnet").rglob("static/*")]
    assert all(not ignored(p, patterns) for p in static)


# ---- GPU variant ---------------------------------------------------------------------------


def _torch_pin() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(r'"(torch==[^"]+)"', text).group(1)


def test_dockerfile_installs_torch_from_a_build_arg_index():
    lines = DOCKERFILE.read_text().splitlines()
    first_from = next(i for i, line in enumerate(lines) if line.startswith("FROM "))
    args = {m.group(1): m.group(2) for line in lines[first_from:]
            if (m := re.match(r"ARG (\w+)=(\S+)", line))}
    assert args.get("TORCH_INDEX_URL") == CPU_INDEX, "the default image stays CPU-only"
    installs = [line for line in lines if "pip install" in line and "torch==" in line]
    assert len(installs) == 1
    assert "${TORCH_INDEX_URL}" in installs[0] and _torch_pin() in installs[0]
    text = DOCKERFILE.read_text()
    assert "--build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu" in text  # documented


def test_gpu_override_builds_cuda_torch_and_runs_hosters_on_cuda():
    base, gpu = load(COMPOSE), load(COMPOSE_GPU)
    assert base["services"]["hoster1"]["build"]["args"]["TORCH_INDEX_URL"] == CPU_INDEX
    hosters = [n for n in base["services"] if n.startswith("hoster")]
    assert sorted(gpu["services"]) == sorted(hosters)
    for name, service in gpu["services"].items():
        assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", service["build"]["args"]["TORCH_INDEX_URL"])
        assert service["environment"]["MESH_NODE_DEVICE"] == "cuda"
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in d["capabilities"] for d in devices), name
        assert "ports" not in service
    readme = (ROOT / "README.md").read_text()
    assert "compose.gpu.yaml" in readme and "TORCH_INDEX_URL" in readme


# ---- the real thing, where the Docker CLI has the compose plugin ---------------------------


def _compose_cli() -> bool:
    if shutil.which("docker") is None:
        return False
    done = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
    return done.returncode == 0


@pytest.mark.skipif(not _compose_cli(), reason="docker compose plugin not installed")
@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, COMPOSE_GPU]])
def test_docker_compose_config_agrees(files):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    argv = ["docker", "compose", *(a for f in files for a in ("-f", str(f))), "config", "--format", "json"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    for name, service in config["services"].items():
        for port in service.get("ports", []):
            assert port.get("host_ip") == LOOPBACK, (name, port)
