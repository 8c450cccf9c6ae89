"""The devnet chain as a real process: HTTP auth errors, durability across kill -9."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from chain.devnet import DevnetChain, dev_accounts, start_devnet_process
from chain.devnet.codec import canonical_json
from chain.devnet.tx import TX_DOMAIN, sign_tx
from chain.types import UNIT, AuthError, ChainUnavailableError, UnknownSubnetError
from keys import AccountKey, NodeKey


def _post(url: str, body: bytes, sig: bytes) -> httpx.Response:
    return httpx.post(url + "/tx", json={"body": body.decode(), "signature": sig.hex()}, timeout=10)


def test_health_and_blocks_advance(devnet):
    c = DevnetChain(devnet.url)
    b = c.get_block()
    c.wait_for_block(b + 3, timeout=10)
    info = c.get_epoch_info()
    assert info.blocks_per_epoch == 10 and 0 <= info.progress < 1 and info.block_time == pytest.approx(0.1)
    assert info.epoch == info.block // 10
    with pytest.raises(UnknownSubnetError):
        c.get_subnet(424242)
    c.close()


def test_forged_replayed_impersonating_requests_get_4xx(devnet):
    c = DevnetChain(devnet.url)
    victim, attacker = dev_accounts(3)[1], AccountKey.generate()
    chain_id = c.chain_id
    # forged: claims to be the victim, signed by the attacker
    body = canonical_json({"chain": chain_id, "call": "transfer", "signer": victim.address, "nonce": 10**6,
                           "args": {"to": attacker.address, "amount": str(UNIT)}})  # fmt: skip
    r = _post(devnet.url, body, attacker.sign(TX_DOMAIN + body))
    assert r.status_code == 401 and r.json()["error"]["reason"] == "BadSignature"
    # replayed: an accepted request sent again
    nonce = c._get(f"/accounts/{victim.address}")["nonce"] + 1
    body, sig = sign_tx(victim, chain_id, "transfer", {"to": attacker.address, "amount": str(UNIT)}, nonce)
    assert _post(devnet.url, body, sig).status_code == 200
    r = _post(devnet.url, body, sig)
    assert r.status_code == 409 and r.json()["error"]["reason"] == "NonceReused"
    assert c.get_balance(attacker.address) == UNIT
    # impersonating: a valid signer acting on someone else's subnet
    owner = DevnetChain(devnet.url, coldkey=victim)
    sid = owner.register_subnet("imp-test", min_stake=100 * UNIT, max_stake=1000 * UNIT)
    mallory = DevnetChain(devnet.url, coldkey=dev_accounts(4)[3])
    with pytest.raises(AuthError, match="WrongSigner"):
        mallory.activate_subnet(sid)
    r = httpx.post(devnet.url + "/tx", json={"body": "{", "signature": "zz"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["reason"] == "InvalidRequest"
    for x in (c, owner, mallory):
        x.close()


def test_unreachable_chain_is_typed():
    c = DevnetChain("http://127.0.0.1:9", timeout=1)
    with pytest.raises(ChainUnavailableError):
        c.get_block()


@pytest.mark.slow
def test_kill9_mid_epoch_loses_no_acknowledged_write(tmp_path):
    proc = start_devnet_process(tmp_path / "chain.db", block_time=0.1, epoch_length=10, log_path=tmp_path / "log")
    try:
        faucet = dev_accounts(1)[0]
        c = DevnetChain(proc.url, coldkey=faucet)
        sink = AccountKey.generate().address
        owner = DevnetChain(proc.url, coldkey=dev_accounts(3)[2])
        sid = owner.register_subnet("durable", min_stake=100 * UNIT, max_stake=1000 * UNIT)
        node = NodeKey.generate()
        hot = AccountKey.generate()
        nid = owner.register_subnet_node(sid, hotkey=hot.address, peer_id=node.peer_id, stake=123 * UNIT)
        acked = 0
        stop = threading.Event()

        def hammer() -> None:
            nonlocal acked
            while not stop.is_set():
                try:
                    c.transfer(sink, 1)
                except ChainUnavailableError:
                    return
                acked += 1

        t = threading.Thread(target=hammer)
        t.start()
        # kill mid-epoch while writes are in flight
        while not (acked >= 20 and 0.3 <= c.get_epoch_info().progress <= 0.7):
            time.sleep(0.01)
        block_before = c.get_block()
        proc.kill()
        stop.set()
        t.join(10)
        proc.restart()
        c2 = DevnetChain(proc.url, coldkey=faucet)
        got = c2.get_balance(sink)
        assert acked <= got <= acked + 1  # at most the one unacknowledged in-flight write extra
        assert c2.get_node_by_hotkey(sid, hot.address).node_id == nid
        assert c2.get_stake(sid, hot.address) == 123 * UNIT
        assert c2.get_block() >= block_before
        c2.wait_for_block(block_before + 3, timeout=10)  # the chain continues
        c2.transfer(sink, 1)  # nonces continue after restart
        assert c2.get_balance(sink) == got + 1
        c.close()
        c2.close()
        owner.close()
    finally:
        proc.stop()
