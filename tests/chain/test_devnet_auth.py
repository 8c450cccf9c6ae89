"""Signed-transaction checks of the devnet state: forged, replayed, impersonating, cross-chain."""

from __future__ import annotations

import json

import pytest
from chain_support import make_subnet

from chain.devnet.codec import canonical_json
from chain.devnet.tx import TX_DOMAIN, sign_tx
from chain.types import UNIT, AuthError, ChainError
from keys import AccountKey


def test_forged_signature_rejected(state, dev_keys):
    victim, attacker = dev_keys[1], AccountKey.generate()
    body = canonical_json({"chain": state.chain_id, "call": "transfer", "signer": victim.address, "nonce": 0,
                           "args": {"to": attacker.address, "amount": str(UNIT)}})  # fmt: skip
    with pytest.raises(AuthError, match="BadSignature"):
        state.submit(body, attacker.sign(TX_DOMAIN + body))
    with pytest.raises(AuthError, match="BadSignature"):
        state.submit(body, b"\x00" * 65)
    assert state.balance(attacker.address) == 0


def test_tampered_body_rejected(state, dev_keys):
    key = dev_keys[1]
    body, sig = sign_tx(key, state.chain_id, "transfer", {"to": dev_keys[2].address, "amount": "1"}, 0)
    tampered = body.replace(b'"amount":"1"', b'"amount":"9"')
    with pytest.raises(AuthError, match="BadSignature"):
        state.submit(tampered, sig)


def test_replayed_nonce_rejected(state, dev_keys):
    key, to = dev_keys[1], dev_keys[2].address
    body, sig = sign_tx(key, state.chain_id, "transfer", {"to": to, "amount": str(UNIT)}, 0)
    state.submit(body, sig)
    with pytest.raises(AuthError, match="NonceReused"):
        state.submit(body, sig)
    old, old_sig = sign_tx(key, state.chain_id, "transfer", {"to": to, "amount": "5"}, 0)
    with pytest.raises(AuthError, match="NonceReused"):
        state.submit(old, old_sig)
    assert state.balance(to) == state.config.dev_balance + UNIT


def test_nonce_consumed_by_failed_call(state, dev_keys):
    poor, rich = AccountKey.generate(), dev_keys[1]
    body, sig = sign_tx(poor, state.chain_id, "transfer", {"to": rich.address, "amount": "10"}, 0)
    with pytest.raises(ChainError, match="InsufficientBalance"):
        state.submit(body, sig)
    b2, s2 = sign_tx(rich, state.chain_id, "transfer", {"to": poor.address, "amount": "100"}, 0)
    state.submit(b2, s2)
    with pytest.raises(AuthError, match="NonceReused"):  # the failed request cannot be replayed now
        state.submit(body, sig)


def test_acting_for_another_account_rejected(tx, subnet4, dev_keys):
    sid, ops = subnet4
    nid, op = next(iter(ops.items()))
    mallory = dev_keys[7]
    with pytest.raises(AuthError, match="WrongSigner"):
        tx(mallory, "add_stake", subnet_id=sid, node_id=nid, hotkey=op.hotkey.address, amount=str(UNIT))
    with pytest.raises(AuthError, match="WrongSigner"):
        tx(mallory, "remove_stake", subnet_id=sid, hotkey=op.hotkey.address, amount=str(UNIT))
    with pytest.raises(AuthError, match="WrongSigner"):
        tx(mallory, "remove_subnet_node", subnet_id=sid, node_id=nid)
    with pytest.raises(AuthError, match="WrongSigner"):
        tx(op.hotkey, "remove_subnet_node", subnet_id=sid, node_id=nid)  # the hotkey is not the owner
    with pytest.raises(AuthError, match="WrongSigner"):
        tx(mallory, "activate_subnet", subnet_id=make_subnet(tx, dev_keys[0], "other"))
    assert tx.state.node(sid, nid).stake == 100 * UNIT


def test_wrong_chain_and_malformed(state, dev_keys):
    key = dev_keys[1]
    body, sig = sign_tx(key, "00" * 16, "transfer", {"to": dev_keys[2].address, "amount": "1"}, 0)
    with pytest.raises(AuthError, match="WrongChain"):
        state.submit(body, sig)
    with pytest.raises(ChainError, match="InvalidRequest"):
        state.submit(b"[1,2]", sig)
    body = json.dumps({"chain": state.chain_id, "call": "nope", "args": {}, "signer": key.address, "nonce": 0}).encode()
    with pytest.raises(ChainError, match="UnknownCall"):
        state.submit(body, key.sign(TX_DOMAIN + body))
