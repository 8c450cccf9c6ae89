"""The common mistakes end in one line (`mesh-node: error: ...`), before any DHT or chain starts; `--version`."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from subnet.node import cli

pytestmark = pytest.mark.long

PEER = "/ip4/127.0.0.1/tcp/31337/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
ENV.pop("MESH_NODE_CONFIG", None)


def _mesh_node(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "subnet.node.cli", *argv], capture_output=True, text=True,
                          timeout=120, env=ENV, stdin=subprocess.DEVNULL)


def _assert_one_line_error(r: subprocess.CompletedProcess, *fragments: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0, r.stderr
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    assert lines[0].startswith("mesh-node: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_version():
    r = _mesh_node("--version")
    assert r.returncode == 0 and r.stdout == f"mesh-node {importlib.metadata.version('mesh-node')}\n"


def test_version_falls_back_to_pyproject(monkeypatch):
    """An uninstalled checkout still knows its version."""
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    pyproject = Path(__file__).resolve().parents[3] / "pyproject.toml"
    assert cli.version() == tomllib.loads(pyproject.read_text())["project"]["version"]


@pytest.fixture
def empty_dir(tmp_path) -> str:
    d = tmp_path / "not-a-model"
    d.mkdir()
    (d / "weights.bin").write_bytes(b"")
    return str(d)


@pytest.mark.parametrize("command", [["--hoster"], ["--validator", "--chain", "http://127.0.0.1:1", "--subnet-id", "1",
                                                    "--account-key", "k.json"], ["api", "--local"]])
def test_model_path_that_does_not_exist(tmp_path, command):
    missing = str(tmp_path / "no-such-model")
    _assert_one_line_error(_mesh_node(*command, "--model", missing), f"--model {missing}: no such directory")


@pytest.mark.parametrize("command", [["--hoster"], ["api", "--initial-peers", PEER], ["chat", "--initial-peers", PEER]])
def test_model_dir_without_config_json(empty_dir, command):
    _assert_one_line_error(_mesh_node(*command, "--model", empty_dir), f"--model {empty_dir}:", "no config.json")


def test_blocks_past_the_models_layers(tiny_llama):
    _assert_one_line_error(_mesh_node("--hoster", "--model", tiny_llama, "--blocks", "4:12"),
                           "--blocks 4:12", "8 layers")


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_device_without_cuda_torch(tiny_llama, device):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this torch has CUDA")
    _assert_one_line_error(_mesh_node("--hoster", "--model", tiny_llama, "--blocks", "0:2", "--device", device),
                           f"--device {device}", "no usable CUDA")


# Every command that takes --initial-peers, and every kind of bad peer, once each (not the 3 x 3 cross
# product: the commands share one parser, and each case is a process that imports torch and hivemind).
@pytest.mark.parametrize(
    "command,peer,message",
    [
        (["--hoster", "--blocks", "0:2"], "garbage", "'garbage' is not a multiaddr"),
        (["api"], "/ip4/1.2.3/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN", "is not a multiaddr"),
        (["chat"], "/ip4/127.0.0.1/tcp/31337", "'/ip4/127.0.0.1/tcp/31337' has no /p2p/<peer id>"),
    ],
)
def test_bad_initial_peers(tiny_llama, command, peer, message):
    r = _mesh_node(*command, "--model", tiny_llama, "--initial-peers", PEER, peer)
    _assert_one_line_error(r, "--initial-peers: ", message)


@pytest.mark.parametrize("peer,message", [
    ("garbage", "'garbage' is not a multiaddr"),
    ("/ip4/1.2.3/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN", "is not a multiaddr"),
    ("/ip4/127.0.0.1/tcp/31337", "has no /p2p/<peer id>"),
    ("/ip4/127.0.0.1/tcp/31337/p2p/not-a-peer-id", "is not a multiaddr"),
])
def test_every_kind_of_bad_peer_in_process(peer, message):
    """The shared check itself, on every kind of bad peer (the CLI cases above run one each)."""
    from subnet.node.checks import check_initial_peers
    from subnet.node.errors import UserError

    check_initial_peers([PEER])
    with pytest.raises(UserError) as err:
        check_initial_peers([PEER, peer])
    assert str(err.value).startswith("--initial-peers: ") and message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("value", ["1.5", "-0.1"])
def test_verify_fraction_out_of_range(tiny_llama, value):
    r = _mesh_node("api", "--model", tiny_llama, "--initial-peers", PEER, "--verify-fraction", value)
    _assert_one_line_error(r, "--verify-fraction must be between 0 and 1")


def test_hoster_adapter_that_is_not_a_peft_adapter(tiny_model_factory, tmp_path):
    not_adapter = tmp_path / "my-lora"
    not_adapter.mkdir()
    r = _mesh_node("--hoster", "--model", tiny_model_factory("llama"), "--adapters", str(not_adapter),
                   "--initial-peers", PEER)
    _assert_one_line_error(r, "adapter", "my-lora", "adapter_config.json")


def test_a_bad_compile_buckets_switch_is_refused(tiny_llama):
    env = {**ENV, "MESH_NODE_COMPILE_BUCKETS": "maybe"}
    r = subprocess.run([sys.executable, "-m", "subnet.node.cli", "--hoster", "--model", tiny_llama, "--blocks", "0:2"],
                       capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
    _assert_one_line_error(r, "MESH_NODE_COMPILE_BUCKETS='maybe'", "off")


def test_a_bad_fork_server_switch_stops_the_devnet_before_it_starts(tmp_path):
    env = {**ENV, "MESH_NODE_FORKSERVER": "yes"}
    r = subprocess.run([sys.executable, "-m", "subnet.node.cli", "devnet", "--dir", str(tmp_path / "dn")],
                       capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
    _assert_one_line_error(r, "MESH_NODE_FORKSERVER='yes'", "0/off/false")
    assert not (tmp_path / "dn").exists()  # refused before the chain or any node started


def test_flag_mistakes_are_found_before_torch_and_hivemind_load(tmp_path):
    """The checks that need neither run first, so a typo costs a fraction of a second, not the
    seconds those imports take (subnet/node/node_options.py)."""
    probe = (
        "import sys\n"
        "from subnet.node import cli\n"
        f"code = cli.main(['--hoster', '--model', {str(tmp_path / 'typo')!r}])\n"
        "print(code, sorted(m for m in ('torch', 'hivemind', 'transformers') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=ENV,
                       stdin=subprocess.DEVNULL)
    assert "no such directory" in r.stderr, r.stderr
    assert r.stdout.split(None, 1)[1].strip() == "[]", r.stdout
