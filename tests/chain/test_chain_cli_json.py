"""CLI chain commands with --json (each output parsed), delegate stake, cost caps, key import, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from chain.devnet import DevnetChain, dev_accounts
from chain.types import UNIT
from keys import AccountKey, NodeKey
from subnet.node.cli import main

HARDHAT = "test test test test test test test test test test test junk"  # public test mnemonic
ALITH_KEY = "0x5fb92d6e98884f76de468fa3f6278f8807c48bebc13595d45af5bdc4da702133"  # public dev key


def _json(capsys, argv: list[str]) -> dict:
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def _key(tmp_path, name: str, key: AccountKey | None = None) -> str:
    return str((key or AccountKey.generate()).save(tmp_path / f"{name}.json"))


def _funded(devnet, tmp_path, name: str, amount: int) -> tuple[AccountKey, str]:
    key = AccountKey.generate()
    with DevnetChain(devnet.url, coldkey=dev_accounts(1)[0]) as faucet:
        faucet.fund(key.address, amount)
    return key, _key(tmp_path, name, key)


def test_every_chain_command_json(devnet, tmp_path, capsys):
    url = ["--chain", devnet.url]
    _, owner = _funded(devnet, tmp_path, "owner", 1000 * UNIT)
    cold_key, cold = _funded(devnet, tmp_path, "cold", 1000 * UNIT)
    kg = _json(capsys, ["keygen", "--dir", str(tmp_path), "--json"])
    assert kg["account_source"] == "new" and kg["peer_id"] == NodeKey.load(kg["node_key"]).peer_id
    hot = kg["account_key"]
    sub = _json(capsys, ["register", *url, "--account-key", owner, "--create-subnet", "json-net", "--json"])
    sid = sub["subnet_id"]
    assert sub["name"] == "json-net" and sub["max_cost"] > sub["cost"] == 10 * UNIT  # cost plus a margin
    args = [*url, "--subnet-id", str(sid)]
    maddr = f"/ip4/127.0.0.1/tcp/31330/p2p/{kg['peer_id']}"
    reg = _json(capsys, ["register", *args, "--account-key", cold, "--hotkey-key", hot, "--node-key", kg["node_key"],
                         "--stake", "120", "--multiaddr", maddr, "--json"])  # fmt: skip
    assert reg["stake"] == 120 * UNIT and reg["node_class"] == "VALIDATOR" and reg["burn"] == UNIT
    assert reg["max_burn"] >= reg["burn"] and reg["hotkey"] == kg["address"]
    d = _json(capsys, ["delegate-stake", *args, "--account-key", owner, "--amount", "50", "--json"])
    assert d["added"] == d["delegate_stake"] == d["subnet_delegate_stake"] == 50 * UNIT
    act = _json(capsys, ["activate", *args, "--account-key", owner, "--json"])
    assert act["state"] == "Active" and act["subnet_id"] == sid
    st = _json(capsys, ["stake", *args, "--account-key", cold, "--hotkey-key", hot, "--amount", "5", "--json"])
    assert st["stake"] == 125 * UNIT and st["added"] == 5 * UNIT and st["node_id"] == reg["node_id"]
    un = _json(capsys, ["unstake", *args, "--account-key", cold, "--hotkey-key", hot, "--amount", "5", "--claim",
                        "--json"])  # fmt: skip
    assert un["unbonding"] == 5 * UNIT and un["stake"] == 120 * UNIT and un["claimed"] == 0
    u = _json(capsys, ["undelegate-stake", *args, "--account-key", owner, "--amount", "20", "--json"])
    assert u["removed"] == 20 * UNIT and u["delegate_stake"] == 30 * UNIT and u["unlock_epoch"] is not None
    status = _json(capsys, ["status", *args, "--node-key", kg["node_key"], "--json"])
    assert status["node_id"] == reg["node_id"] and status["multiaddr"] == maddr
    assert status["subnet_delegate_stake"] == 30 * UNIT and status["node_class"] == "VALIDATOR"
    assert status["coldkey"] == cold_key.address
    u = _json(capsys, ["undelegate-stake", *args, "--account-key", owner, "--all", "--json"])
    assert u["removed"] == 30 * UNIT and u["subnet_delegate_stake"] == 0
    capsys.readouterr()
    assert main(["status", *args, "--node-key", kg["node_key"]]) == 0
    assert "none: the subnet earns no node emissions" in capsys.readouterr().out


def test_keygen_imports_wallet_keys(tmp_path, capsys):
    k = _json(capsys, ["keygen", "--dir", str(tmp_path), "--mnemonic", HARDHAT, "--account-only", "--json"])
    assert k["address"] == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266" and k["node_key"] is None  # MetaMask #1
    assert AccountKey.load(k["account_key"]).address == k["address"]
    k = _json(capsys, ["keygen", "--account-key", str(tmp_path / "a1.json"), "--mnemonic", HARDHAT,
                       "--account-index", "1", "--account-only", "--json"])  # fmt: skip
    assert k["address"] == "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"  # the wallet's second account
    k = _json(capsys, ["keygen", "--account-key", str(tmp_path / "p.json"), "--mnemonic", HARDHAT,
                       "--derivation-path", "m/44'/60'/0'/0/1", "--account-only", "--json"])  # fmt: skip
    assert k["address"] == "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    k = _json(capsys, ["keygen", "--account-key", str(tmp_path / "alith.json"), "--node-key", str(tmp_path / "n.key"),
                       "--import-private-key", ALITH_KEY, "--json"])  # fmt: skip
    assert k["address"] == "0xf24FF3a9CF04c71Dbc94D0b566f7A27B94566cac" and k["account_source"] == "private key"
    assert (tmp_path / "n.key").exists()


def test_keygen_reads_secret_from_stdin(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from subnet.node.cli import main; sys.exit(main())", "keygen",
         "--account-key", str(tmp_path / "a.json"), "--account-only", "--import-private-key", "-", "--json"],
        input=ALITH_KEY + "\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["address"] == "0xf24FF3a9CF04c71Dbc94D0b566f7A27B94566cac"
    assert ALITH_KEY not in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def subnet_id(devnet) -> int:
    """A subnet of this module on the session's devnet (the error cases need one to exist)."""
    with DevnetChain(devnet.url, coldkey=dev_accounts(1)[0]) as owner:
        return owner.register_subnet(f"errors-{AccountKey.generate().address[2:10]}", min_stake=100 * UNIT,
                                     max_stake=1000 * UNIT)


PEER = NodeKey.from_seed(b"\x05" * 32).peer_id
OTHER = NodeKey.from_seed(b"\x06" * 32).peer_id


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["register", "--chain", "URL", "--account-key", "COLD", "--create-subnet", "x", "--max-cost", "5"],
         "subnet registration cost is 10 TENSOR, more than --max-cost 5 TENSOR"),
        (["register", "--chain", "URL", "--subnet-id", "SID", "--account-key", "COLD", "--hotkey", "0x" + "22" * 20,
          "--peer-id", PEER, "--max-burn", "0.5"], "node registration burn is 1 TENSOR, more than --max-burn 0.5"),
        (["register", "--chain", "URL", "--subnet-id", "SID", "--account-key", "COLD", "--hotkey", "0x" + "22" * 20,
          "--peer-id", PEER, "--multiaddr", "/ip4/1.2.3.4/tcp/5"], "--multiaddr: multiaddr must end in /p2p/"),
        (["register", "--chain", "URL", "--subnet-id", "SID", "--account-key", "COLD", "--hotkey", "0x" + "22" * 20,
          "--peer-id", PEER, "--multiaddr", f"/ip4/1.2.3.4/tcp/5/p2p/{OTHER}"], "but the node's peer id is"),
        (["register", "--chain", "URL", "--subnet-id", "SID", "--account-key", "COLD", "--hotkey", "0x" + "22" * 20,
          "--peer-id", PEER, "--multiaddr", "/ip4/1.2.3/tcp/5/p2p/" + PEER], "--multiaddr"),
        (["register", "--chain", "ws://127.0.0.1:9", "--account-key", "COLD", "--create-subnet", "x"],
         "--bootnode MULTIADDR is required"),
        (["register", "--chain", "URL", "--account-key", "COLD", "--create-subnet", "x", "--bootnode", "/ip4/1.2.3.4"],
         "--bootnode"),
        (["register", "--chain", "URL", "--account-key", "COLD", "--create-subnet", "x", "--max-stake", "50"],
         "--max-stake 50 is below --min-stake 100"),
        (["register", "--chain", "URL", "--account-key", "COLD", "--create-subnet", "x"],
         "has 0 TENSOR; the subnet registration needs 10 TENSOR"),
        (["delegate-stake", "--chain", "URL", "--subnet-id", "SID", "--account-key", "COLD", "--amount", "0"],
         "--amount must be more than 0"),
        (["delegate-stake", "--chain", "URL", "--subnet-id", "SID", "--account-key", "COLD", "--amount", "1"],
         "more than the balance"),
        (["delegate-stake", "--chain", "URL", "--subnet-id", "4242", "--account-key", "COLD", "--amount", "1"],
         "no subnet 4242"),
        (["delegate-stake", "--chain", "URL", "--subnet-id", "SID", "--amount", "1"], "--account-key is required"),
        (["undelegate-stake", "--chain", "URL", "--subnet-id", "SID", "--account-key", "COLD", "--all"],
         "has no delegate stake"),
        (["register", "--chain", "URL", "--subnet-id", "SID", "--account-key", "COLD", "--hotkey", "0x12",
          "--peer-id", PEER], "--hotkey must be a 0x account address"),
        (["register", "--chain", "URL", "--subnet-id", "SID", "--account-key", "COLD", "--hotkey", "0x" + "22" * 20,
          "--peer-id", "0OIl"], "is not a base58 peer id"),
        (["register", "--chain", "URL", "--subnet-id", "SID", "--account-key", "COLD", "--hotkey-key", "COLD",
          "--peer-id", PEER], "the hotkey must be another account than the coldkey"),
        (["keygen", "--dir", "TMP", "--import-private-key", "0x1234"], "64 hex digits"),
        (["keygen", "--dir", "TMP", "--mnemonic", HARDHAT, "--derivation-path", "m/44'/x"], "invalid derivation path"),
        (["keygen", "--dir", "TMP", "--import-private-key", ALITH_KEY, "--account-index", "1"], "apply to --mnemonic"),
        (["keygen", "--dir", "TMP", "--mnemonic", "not a mnemonic"], "invalid mnemonic"),
    ],
)
def test_chain_cli_errors_are_one_line(devnet, subnet_id, tmp_path, argv, needle):
    cold = _key(tmp_path, "cold")
    names = {"URL": devnet.url, "COLD": cold, "TMP": str(tmp_path), "SID": str(subnet_id)}
    argv = [names.get(a, a) for a in argv]
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from subnet.node.cli import main; sys.exit(main())", *argv],
        capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
    )  # fmt: skip
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("mesh-node: error:") and needle in lines[0], lines[0]
