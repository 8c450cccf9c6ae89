"""Backends the Chain contract suite runs against: devnet always, hypertensor when reachable."""

from __future__ import annotations

import os
from typing import Protocol

from chain import connect
from chain.base import Chain
from chain.types import UNIT, EpochInfo
from keys import AccountKey


class Backend(Protocol):
    name: str
    url: str
    node_stake: int
    delegate_stake: int  # what a test subnet's owner delegates (else no node emissions)
    join_epochs: int  # bound on Registered -> Validator for a node joining an active subnet

    def chain(self, coldkey: AccountKey | None = None, hotkey: AccountKey | None = None) -> Chain: ...
    def funded_account(self, amount: int) -> AccountKey: ...
    def subnet_kwargs(self, coldkeys: list[str]) -> dict: ...
    def next_epoch(self, chain: Chain, subnet_id: int) -> EpochInfo: ...
    def close(self) -> None: ...


class DevnetBackend:
    name = "devnet"
    node_stake = 100 * UNIT
    delegate_stake = 100 * UNIT  # the subnet owner backs each test subnet
    join_epochs = 12  # bound on Registered -> Validator (queue 1 + idle 2 + included 2 epochs on the devnet)

    def __init__(self, url: str):
        from chain.devnet import DevnetChain, dev_accounts

        self.url = url
        self._faucet = DevnetChain(url, coldkey=dev_accounts(1)[0])

    def chain(self, coldkey=None, hotkey=None) -> Chain:
        return connect(self.url, coldkey, hotkey)

    def funded_account(self, amount: int) -> AccountKey:
        key = AccountKey.generate()
        self._faucet.fund(key.address, amount)
        return key

    def subnet_kwargs(self, coldkeys: list[str]) -> dict:
        return {"min_stake": 100 * UNIT, "max_stake": 1000 * UNIT, "initial_coldkeys": coldkeys}

    def next_epoch(self, chain: Chain, subnet_id: int) -> EpochInfo:
        e = chain.get_epoch_info(subnet_id).epoch
        return self._faucet.wait_for_epoch(e + 1, timeout=60)

    def close(self) -> None:
        self._faucet.close()


def hypertensor_url() -> str | None:
    return os.environ.get("MESH_HYPERTENSOR_WS") or None
