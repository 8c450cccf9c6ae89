"""`mesh-node --hoster/--validator`: option errors are one line; a hoster node serves and stops on SIGINT."""

from __future__ import annotations

import signal
import sys

import pytest

from subnet.node.procs import ManagedProcess


def _run(capsys, *argv):
    from subnet.node.cli import main

    code = main(list(argv))
    return code, capsys.readouterr()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--hoster"], "--hoster needs --model"),
        (["--validator", "--model", "x"], "--validator needs --chain"),
        (["--hoster", "--model", "x", "--chain", "http://127.0.0.1:1"], "--chain needs --subnet-id"),
    ],
)
def test_node_option_errors_are_one_line(capsys, argv, message):
    code, out = _run(capsys, *argv)
    assert code == 1
    assert out.err.strip().count("\n") == 0 and message in out.err and "Traceback" not in out.err


def test_bad_linear_kernel_in_the_environment_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv("MESH_LINEAR_KERNEL", "fastest")
    code, out = _run(capsys, "--hoster", "--model", "x")
    assert code == 1 and out.err.strip().count("\n") == 0 and "unknown linear kernel 'fastest'" in out.err


def test_compile_with_another_kernel_is_one_line(capsys, monkeypatch):
    monkeypatch.delenv("MESH_LINEAR_KERNEL", raising=False)
    code, out = _run(capsys, "--hoster", "--model", "x", "--compile", "--linear-kernel", "blas")
    assert code == 1 and out.err.strip().count("\n") == 0
    assert "--compile needs the 'onednn' or 'torch' linear kernel, not 'blas'" in out.err


def test_compile_option_reaches_the_hoster(tmp_path):
    """`--compile` on the command line and `compile_decode` in the TOML file both become NodeOptions.compile_decode."""
    from subnet.node.assembly import NodeOptions
    from subnet.node.cli import _build_parser, apply_node_config

    def options(argv):
        return NodeOptions.from_args(apply_node_config(_build_parser(), _build_parser().parse_known_args(argv)[0],
                                                       argv))

    cfg = tmp_path / "mesh.toml"
    cfg.write_text('[node]\nhoster = true\nmodel = "m"\ncompile_decode = true\n')
    assert options(["--config", str(cfg)]).compile_decode is True
    assert options(["--hoster", "--model", "m", "--compile"]).compile_decode is True
    assert options(["--hoster", "--model", "m"]).compile_decode is False


def test_linear_kernel_option_reaches_the_hoster(tmp_path):
    """`linear_kernel` in the TOML file (like every node option) becomes NodeOptions and the Hoster's choice."""
    import argparse

    from subnet.node.assembly import NodeOptions
    from subnet.node.cli import _build_parser, apply_node_config

    cfg = tmp_path / "mesh.toml"
    cfg.write_text('[node]\nhoster = true\nmodel = "m"\nlinear_kernel = "blas"\n')
    argv = ["--config", str(cfg)]
    args = apply_node_config(_build_parser(), _build_parser().parse_known_args(argv)[0], argv)
    assert isinstance(args, argparse.Namespace) and NodeOptions.from_args(args).linear_kernel == "blas"


def test_node_options_from_toml_and_env(tmp_path, capsys, monkeypatch, tiny_llama):
    """Flags > environment > file: the file says --hoster and a model dir that does not exist, the environment
    names a real one, the flag a node key file that does not exist (the first thing the node loads)."""
    cfg = tmp_path / "mesh.toml"
    cfg.write_text(f'[node]\nhoster = true\nblocks = "0:2"\nmodel = "{tmp_path / "no-such-model"}"\n')
    monkeypatch.setenv("MESH_NODE_MODEL", tiny_llama)
    code, out = _run(capsys, "--config", str(cfg), "--node-key", str(tmp_path / "missing.key"))
    assert code == 1 and "node key file not found" in out.err


@pytest.mark.slow
def test_hoster_node_serves_and_stops_on_sigint(tmp_path, tiny_llama):
    proc = ManagedProcess("hoster", [sys.executable, "-m", "subnet.node.cli", "--hoster", "--model", tiny_llama,
                                     "--blocks", "0:4"], log_path=tmp_path / "hoster.log")
    try:
        line = proc.wait_ready(timeout=120)
        assert line.startswith("READY 12D3KooW")
        proc.proc.send_signal(signal.SIGINT)
        assert proc.proc.wait(60) == 0
    finally:
        proc.kill()
    log = (tmp_path / "hoster.log").read_text()
    assert "announcement_withdrawn" in log and "node_stopped" in log and "Traceback" not in log
