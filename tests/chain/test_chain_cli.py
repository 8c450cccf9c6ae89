"""CLI: register/activate/stake/unstake/status against a real devnet; errors are one line."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from chain.devnet import dev_accounts
from keys import AccountKey, NodeKey
from subnet.node.cli import main


def _keys(tmp_path, name: str, key: AccountKey | None = None) -> str:
    key = key or AccountKey.generate()
    return str(key.save(tmp_path / f"{name}.json"))


def test_register_activate_stake_unstake_status(devnet, tmp_path, capsys):
    owner = _keys(tmp_path, "owner", dev_accounts(6)[5])
    cold = _keys(tmp_path, "cold", dev_accounts(7)[6])
    hot = _keys(tmp_path, "hot")
    node = NodeKey.generate()
    node.save(tmp_path / "node.key")
    url = devnet.url
    assert main(["register", "--chain", url, "--account-key", owner, "--create-subnet", "cli-net"]) == 0
    sid = int(capsys.readouterr().out.split("subnet id:")[1].split()[0])
    args = ["--chain", url, "--subnet-id", str(sid), "--account-key", cold, "--hotkey-key", hot]
    assert main(["register", *args, "--node-key", str(tmp_path / "node.key"), "--stake", "150.5"]) == 0
    out = capsys.readouterr().out
    assert "class:       VALIDATOR" in out and "150.5 TENSOR" in out
    assert main(["activate", "--chain", url, "--subnet-id", str(sid), "--account-key", owner]) == 0
    assert "Active" in capsys.readouterr().out
    assert main(["stake", *args, "--amount", "10"]) == 0
    assert "160.5 TENSOR" in capsys.readouterr().out
    assert main(["unstake", *args, "--amount", "20", "--claim"]) == 0
    out = capsys.readouterr().out
    assert "unbonding 20 TENSOR" in out and "stake now 140.5 TENSOR" in out and "claimed 0 TENSOR" in out
    node_key = str(tmp_path / "node.key")
    assert main(["status", "--chain", url, "--subnet-id", str(sid), "--node-key", node_key, "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    # The session devnet keeps running 1 s epochs in which this node is elected and never proposes,
    # so its reputation may already have dropped by the time `status` runs on a busy machine.
    assert st["registered"] and st["node_class"] == "VALIDATOR" and 0.0 < st["reputation"] <= 1.0
    assert st["stake"] == 140_500_000_000_000_000_000 and st["coldkey_balance"] > 0 and "last_score" in st
    assert main(["status", "--chain", url, "--subnet-id", str(sid), "--hotkey-key", hot]) == 0
    out = capsys.readouterr().out
    assert "class:       VALIDATOR" in out and "last score:" in out
    assert 0.0 < float(re.search(r"^reputation:  ([0-9.]+)$", out, re.M).group(1)) <= 1.0


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["status", "--chain", "http://127.0.0.1:9", "--subnet-id", "1", "--hotkey", "0x" + "11" * 20], "unreachable"),
        (["register", "--chain", "ftp://x", "--subnet-id", "1", "--account-key", "COLD"], "--chain must be"),
        (["register", "--chain", "URL", "--subnet-id", "1"], "--account-key is required"),
        (["register", "--chain", "URL", "--subnet-id", "1", "--account-key", "/nonexistent.json"], "not found"),
        (["stake", "--chain", "URL", "--subnet-id", "999", "--account-key", "COLD", "--hotkey", "0x" + "11" * 20,
          "--amount", "1"], "no subnet 999"),  # fmt: skip
        (["stake", "--chain", "URL", "--subnet-id", "1", "--account-key", "COLD", "--amount", "-1"], "--amount"),
        (["register", "--chain", "URL", "--subnet-id", "424242", "--account-key", "COLD", "--hotkey", "0x" + "22" * 20,
          "--peer-id", "12D3KooWxyz", "--stake", "100"], "UnknownSubnet"),  # fmt: skip
        (["activate", "--chain", "URL", "--subnet-id", "424242", "--account-key", "COLD"], "UnknownSubnet"),
    ],
)
def test_cli_errors_are_one_line(devnet, tmp_path, argv, needle):
    cold = _keys(tmp_path, "cold")
    argv = [devnet.url if a == "URL" else cold if a == "COLD" else a for a in argv]
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from subnet.node.cli import main; sys.exit(main())", *argv],
        capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
    )  # fmt: skip
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mesh-node: error:") and needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_chain_command_serves_and_prints_dev_keys(tmp_path):
    import time

    import httpx

    from chain.devnet.process import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from subnet.node.cli import main; sys.exit(main())", "chain",
         "--db", str(tmp_path / "c.db"), "--port", str(port), "--block-time", "0.1", "--epoch-length", "10"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        info = httpx.get(f"http://127.0.0.1:{port}/chain", timeout=5).json()
        assert info["config"]["epoch_length"] == 10 and info["config"]["block_time"] == 0.1
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    assert dev_accounts(1)[0].address in out and dev_accounts(1)[0].private_key_hex in out
