"""Node and account keys: round trips, signatures, libp2p peer ids, clean errors."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from keys import AccountKey, KeyFileError, NodeKey, peer_id_from_public_key, public_key_from_peer_id, verify
from keys.account import verify_account_signature


def test_node_key_round_trip(tmp_path):
    key = NodeKey.generate()
    path = key.save(tmp_path / "node.key")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = NodeKey.load(path)
    assert loaded.peer_id == key.peer_id and loaded.public_key == key.public_key
    sig = loaded.sign(b"hello")
    assert key.verify(b"hello", sig)


def test_refuses_overwrite_unless_forced(tmp_path):
    path = tmp_path / "node.key"
    NodeKey.generate().save(path)
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        NodeKey.generate().save(path)
    other = NodeKey.generate()
    other.save(path, force=True)
    assert NodeKey.load(path).peer_id == other.peer_id


def test_forged_or_altered_signature_rejected():
    key, other = NodeKey.generate(), NodeKey.generate()
    sig = key.sign(b"message")
    assert verify(key.public_key, b"message", sig)
    assert not verify(key.public_key, b"messagE", sig)
    altered = bytes([sig[0] ^ 1]) + sig[1:]
    assert not verify(key.public_key, b"message", altered)
    assert not verify(other.public_key, b"message", sig)
    assert not verify(key.public_key, b"message", sig[:10])


def test_peer_id_round_trip_and_format():
    key = NodeKey.from_seed(bytes(32))
    assert key.peer_id.startswith("12D3KooW")
    assert public_key_from_peer_id(key.peer_id) == key.public_key
    assert peer_id_from_public_key(key.public_key) == key.peer_id
    with pytest.raises(ValueError):
        public_key_from_peer_id("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")  # RSA-style sha256 id


def test_peer_id_matches_real_hivemind_dht(tmp_path):
    from subnet.swarm.dht import start_dht

    key = NodeKey.generate()
    path = key.save(tmp_path / "node.key")
    dht = start_dht(key, identity_path=path)
    try:
        assert dht.peer_id.to_base58() == key.peer_id
    finally:
        dht.shutdown()


@pytest.mark.parametrize(
    "content,match",
    [(b"", "not an Ed25519"), (b"garbage" * 10, "not an Ed25519"), (b"\x08\x01\x12\x40" + bytes(64), "corrupt")],
)
def test_bad_node_key_files(tmp_path, content, match):
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    with pytest.raises(KeyFileError, match=match):
        NodeKey.load(path)
    with pytest.raises(KeyFileError, match="not found"):
        NodeKey.load(tmp_path / "missing.key")
    with pytest.raises(KeyFileError, match="directory does not exist"):
        NodeKey.generate().save(tmp_path / "nodir" / "x.key")


def test_account_key_round_trip_and_signature(tmp_path):
    acct = AccountKey.generate()
    assert acct.address.startswith("0x") and len(acct.address) == 42
    path = acct.save(tmp_path / "account.json")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = AccountKey.load(path)
    assert loaded.address == acct.address
    sig = loaded.sign(b"payload")
    assert verify_account_signature(acct.address, b"payload", sig)
    assert not verify_account_signature(acct.address, b"payloaD", sig)
    assert not verify_account_signature(AccountKey.generate().address, b"payload", sig)
    assert not verify_account_signature(acct.address, b"payload", b"\x00" * 65)


def test_account_from_known_private_key():
    # Alith, the well-known Ethereum dev account of Substrate/Frontier dev chains.
    alith = AccountKey.from_private_key("0x5fb92d6e98884f76de468fa3f6278f8807c48bebc13595d45af5bdc4da702133")
    assert alith.address.lower() == "0xf24ff3a9cf04c71dbc94d0b566f7a27b94566cac"


def test_bad_account_files(tmp_path):
    p = tmp_path / "a.json"
    p.write_text("{not json")
    with pytest.raises(KeyFileError, match="corrupt"):
        AccountKey.load(p)
    p.write_text('{"type": "ecdsa", "private_key": "0x1234"}')
    with pytest.raises(KeyFileError, match="corrupt"):
        AccountKey.load(p)
    with pytest.raises(KeyFileError):
        AccountKey.from_mnemonic("not a real mnemonic at all")


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "subnet.node.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_cli_help_and_keygen(tmp_path):
    r = _cli("--help")
    assert r.returncode == 0 and "keygen" in r.stdout and "--hoster" in r.stdout
    r = _cli("keygen", "--dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    peer_id = NodeKey.load(tmp_path / "node.key").peer_id
    assert peer_id in r.stdout
    assert AccountKey.load(tmp_path / "account.json").address in r.stdout


@pytest.mark.parametrize("case", ["exists", "missing_dir"])
def test_cli_keygen_errors_are_one_line(tmp_path, case):
    if case == "exists":
        assert _cli("keygen", "--dir", str(tmp_path)).returncode == 0
        r = _cli("keygen", "--dir", str(tmp_path))
    else:
        r = _cli("keygen", "--dir", str(tmp_path / "nope"))
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("mesh-node: error:")


def test_hosters_and_clients_without_a_chain_do_not_import_substrate_interface():
    """Node keys are pure pynacl; substrate-interface (about 0.25 s of CPU) loads only when an account is used,
    so `python -m hoster` and the client start without it. `keys.AccountKey` still works, loaded on first use."""
    code = ("import sys; import hoster.__main__, hoster.server, subnet.client; "
            "before = 'substrateinterface' in sys.modules; from keys import AccountKey; "
            "print(before, 'substrateinterface' in sys.modules, AccountKey.__module__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["False", "True", "keys.account"], r.stderr[-2000:]
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        import keys

        keys.Nope  # noqa: B018
