"""Helpers for the chain tests: in-process signer, node operators, subnet setup."""

from __future__ import annotations

import itertools

from chain.devnet.state import ChainState
from chain.devnet.tx import sign_tx
from chain.types import UNIT
from keys import AccountKey, NodeKey


class Signer:
    """Signs and submits calls to an in-process ChainState with per-key nonces."""

    def __init__(self, state: ChainState):
        self.state = state
        self._nonce: dict[str, itertools.count] = {}

    def __call__(self, key: AccountKey, call: str, **args) -> dict:
        counter = self._nonce.setdefault(key.address, itertools.count(self.state.nonce(key.address) + 1))
        body, sig = sign_tx(key, self.state.chain_id, call, args, next(counter))
        return self.state.submit(body, sig)["result"]

    def advance_to_epoch(self, epoch: int) -> None:
        while self.state.block() < epoch * self.state.config.epoch_length:
            self.state.produce_block()

    def epoch(self) -> int:
        return self.state.epoch_of(self.state.block())


class Operator:
    """A node operator: coldkey (funded dev account), fresh hotkey and node key."""

    def __init__(self, coldkey: AccountKey):
        self.coldkey = coldkey
        self.hotkey = AccountKey.generate()
        self.node_key = NodeKey.generate()

    @property
    def peer_id(self) -> str:
        return self.node_key.peer_id


def make_subnet(tx: Signer, owner: AccountKey, name: str = "net") -> int:
    return tx(owner, "register_subnet", name=name, min_stake=str(100 * UNIT), max_stake=str(1000 * UNIT))["subnet_id"]


def register(tx: Signer, sid: int, op: Operator, stake: int = 100 * UNIT) -> int:
    return tx(op.coldkey, "register_subnet_node", subnet_id=sid, hotkey=op.hotkey.address, peer_id=op.peer_id,
              stake=str(stake))["node_id"]  # fmt: skip
