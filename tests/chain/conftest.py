"""Chain test fixtures: an in-process devnet state (fast rule tests) and a real devnet process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from chain_support import Operator, Signer, make_subnet, register

from chain.devnet.config import DevnetConfig, dev_accounts
from chain.devnet.state import ChainState
from chain.types import UNIT
from keys import AccountKey


@pytest.fixture(scope="session")
def dev_keys() -> list[AccountKey]:
    return dev_accounts(10)


@pytest.fixture
def state(tmp_path) -> Iterator[ChainState]:
    st = ChainState(tmp_path / "chain.db", DevnetConfig(epoch_length=4, queue_epochs=1, unbonding_epochs=2))
    yield st
    st.close()


@pytest.fixture
def tx(state) -> Signer:
    return Signer(state)


@pytest.fixture
def subnet4(tx, dev_keys):
    """An active subnet with 4 initial (Validator-class) nodes, advanced into its first elected epoch."""
    sid = make_subnet(tx, dev_keys[0])
    tx(dev_keys[0], "add_to_delegate_stake", subnet_id=sid, amount=str(100 * UNIT))  # else no node emissions
    ops = [Operator(dev_keys[i + 1]) for i in range(4)]
    ids = [register(tx, sid, op) for op in ops]
    tx(dev_keys[0], "activate_subnet", subnet_id=sid)
    tx.advance_to_epoch(tx.epoch() + 1)
    return sid, dict(zip(ids, ops, strict=True))


@pytest.fixture(scope="session")
def devnet(tmp_path_factory):
    """One real devnet chain process for the session: 0.1 s blocks, 10-block epochs."""
    from chain.devnet.process import start_devnet_process

    d = tmp_path_factory.mktemp("devnet")
    handle = start_devnet_process(d / "chain.db", block_time=0.1, epoch_length=10, log_path=d / "chain.log")
    yield handle
    handle.stop()
