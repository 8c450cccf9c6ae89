"""Contract-suite backend for a Hypertensor node (chopsticks running the public testnet spec).

Chopsticks' genesis funds the well-known Ethereum dev accounts; blocks are produced on
demand with the `dev_newBlock` RPC, so epochs advance as fast as chopsticks builds blocks.
"""

from __future__ import annotations

from chain.hypertensor.client import HypertensorChain
from chain.hypertensor.records import PERCENT
from chain.types import UNIT, EpochInfo
from keys import AccountKey, NodeKey

# Well-known Ethereum dev keys (Alith, Baltathar): public test keys, funded at genesis.
ALITH = "0x5fb92d6e98884f76de468fa3f6278f8807c48bebc13595d45af5bdc4da702133"


class HypertensorBackend:
    name = "hypertensor"
    node_stake = 100 * UNIT
    delegate_stake = 1000 * UNIT  # replaced in __init__ by what the runtime requires to activate a subnet
    join_epochs = 40  # bound on Registered -> Validator for a node joining an active subnet

    def __init__(self, url: str):
        self.url = url
        self._faucet = HypertensorChain(url, AccountKey.from_private_key(ALITH))
        self.delegate_stake = max(self.delegate_stake, self._min_delegate_stake())

    def _min_delegate_stake(self) -> int:
        """Activation needs delegate stake >= issuance x MinSubnetDelegateStakeFactor x (up to) the max multiplier."""
        q = self._faucet._optional
        issuance = self._faucet.connection.query("TotalIssuance", module="Balances")
        factor, mult = q("MinSubnetDelegateStakeFactor"), q("MaxMinDelegateStakeMultiplier")
        if not issuance or factor is None:
            return 0
        return int(issuance) * int(factor) // PERCENT * int(mult or PERCENT) // PERCENT + UNIT

    def chain(self, coldkey=None, hotkey=None) -> HypertensorChain:
        return HypertensorChain(self.url, coldkey, hotkey)

    def funded_account(self, amount: int) -> AccountKey:
        key = AccountKey.generate()
        self._faucet.transfer(key.address, amount)
        return key

    def subnet_kwargs(self, coldkeys: list[str]) -> dict:
        boot = NodeKey.generate().peer_id
        return {
            "min_stake": 100 * UNIT,
            "max_stake": 1000 * UNIT,
            "initial_coldkeys": coldkeys,
            "bootnodes": {boot: f"/ip4/127.0.0.1/tcp/31330/p2p/{boot}"},
        }

    def new_blocks(self, count: int) -> None:
        self._faucet.connection.retry(lambda s: s.rpc_request("dev_newBlock", [{"count": count}]), "dev_newBlock")

    def next_epoch(self, chain, subnet_id: int) -> EpochInfo:
        info = chain.get_epoch_info(subnet_id)
        self.new_blocks(info.blocks_per_epoch - info.block_in_epoch)
        out = chain.get_epoch_info(subnet_id)
        assert out.epoch == info.epoch + 1, (info, out)
        return out

    def close(self) -> None:
        self._faucet.close()
