"""One contract for `chain.Chain`, run against every backend available.

Devnet always (a real chain process); Hypertensor when MESH_HYPERTENSOR_WS points at a
node (e.g. chopsticks running the public testnet spec). One full round: register a subnet
and nodes, activate, read the elected validator, propose, attest, see the submission,
rewards and reputation. Each test makes its own subnet on the module's chain (fixtures
`scenario`: registered; `active_scenario`: activated, in an epoch with an elected
validator), so any test runs alone or in any order.
"""

from __future__ import annotations

import pytest
from chain_backends import DevnetBackend, hypertensor_url

from chain.types import (
    UNIT,
    AlreadyAttestedError,
    AlreadyProposedError,
    ChainError,
    NodeClass,
    NotElectedError,
    ScoreEntry,
    SubnetState,
)
from keys import AccountKey, NodeKey

BACKENDS = ["devnet"] + (["hypertensor"] if hypertensor_url() else [])


# Devnet timing: 4 s epochs of 0.1 s blocks. A proposal and its attestations must land in one
# epoch, so the round starts early in an epoch (see ROUND_MAX_PROGRESS) and has seconds to spare
# even when the machine is busy (a starved block producer only makes the epoch longer).
DEVNET_BLOCK_TIME, DEVNET_EPOCH_LENGTH = 0.1, 40
ROUND_MAX_PROGRESS = 0.3


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request, tmp_path_factory):
    """One chain per module (a process start is the slow part); every test makes its own subnet on it."""
    if request.param == "devnet":
        from chain.devnet.process import start_devnet_process

        d = tmp_path_factory.mktemp("contract")
        proc = start_devnet_process(d / "chain.db", block_time=DEVNET_BLOCK_TIME, epoch_length=DEVNET_EPOCH_LENGTH,
                                    log_path=d / "chain.log")
        b = DevnetBackend(proc.url)
        yield b
        b.close()
        proc.stop()
    else:
        from chain_hypertensor_backend import HypertensorBackend

        b = HypertensorBackend(hypertensor_url())
        yield b
        b.close()


class Operator:
    def __init__(self, backend, n: int):
        self.coldkey = backend.funded_account(backend.node_stake * 3)
        self.hotkey = backend.funded_account(10 * UNIT)  # pays fees of proposals/attestations
        self.node_key = NodeKey.generate()
        self.chain = backend.chain(self.coldkey, self.hotkey)


def _registered_subnet(backend) -> dict:
    """A new subnet (unique name) with 4 initial-coldkey nodes registered: state REGISTERED."""
    owner = backend.funded_account(5000 * UNIT)
    owner_chain = backend.chain(owner)
    ops = [Operator(backend, i) for i in range(4)]
    name = f"contract-{AccountKey.generate().address[2:10]}"
    sid = owner_chain.register_subnet(
        name, repo=f"https://example.invalid/{name}", description="contract test",
        **backend.subnet_kwargs([o.coldkey.address for o in ops]),
    )
    ids = {}
    for op in ops:
        nid = op.chain.register_subnet_node(
            sid, hotkey=op.hotkey.address, peer_id=op.node_key.peer_id, stake=backend.node_stake
        )
        ids[nid] = op
    return {"backend": backend, "owner": owner_chain, "sid": sid, "ops": ids, "name": name, "_ops": ops}


def _close(scenario: dict) -> None:
    for op in scenario["_ops"]:
        op.chain.close()
    scenario["owner"].close()


def elected_epoch(backend, chain, sid: int, *, max_progress: float = 1.0, epochs: int = 4):
    """(epoch info, elected node id) of the first epoch, the current one or one of the next `epochs`,
    that has an elected validator and is not further along than `max_progress`."""
    info = chain.get_epoch_info(sid)
    for _ in range(epochs + 1):
        elected = chain.get_elected_validator(sid, info.epoch)
        if elected is not None and info.progress < max_progress:
            return info, elected
        info = backend.next_epoch(chain, sid)
    raise AssertionError(f"no epoch with an elected validator (progress < {max_progress}) within {epochs} epochs")


@pytest.fixture
def scenario(backend):
    """A fresh subnet with 4 registered nodes, not activated: each test starts from this known state."""
    s = _registered_subnet(backend)
    yield s
    _close(s)


@pytest.fixture
def active_scenario(backend):
    """A fresh subnet, activated, in an epoch that has an elected validator and most of its blocks ahead.

    Fresh rather than shared: an active subnet changes every epoch on its own (an elected
    validator that proposes nothing loses reputation and is eventually removed), so a shared
    one would depend on how long earlier tests took.
    """
    s = _registered_subnet(backend)
    try:
        assert s["owner"].activate_subnet(s["sid"]).ok
        s["epoch"], s["elected"] = elected_epoch(backend, s["owner"], s["sid"], max_progress=ROUND_MAX_PROGRESS)
        yield s
    finally:
        _close(s)


def test_subnet_and_nodes_registered(scenario):
    sid, ops, chain = scenario["sid"], scenario["ops"], scenario["owner"]
    info = chain.get_subnet(sid)
    assert info.subnet_id == sid and info.name == scenario["name"]
    assert info.state == SubnetState.REGISTERED
    nodes = {n.node_id: n for n in chain.get_subnet_nodes(sid)}
    assert set(ops) <= set(nodes)
    for nid, op in ops.items():
        n = nodes[nid]
        assert n.hotkey.lower() == op.hotkey.address.lower()
        assert n.coldkey.lower() == op.coldkey.address.lower()
        assert n.peer_id == op.node_key.peer_id
        assert n.node_class == NodeClass.VALIDATOR  # registered before activation
        assert n.stake == scenario["backend"].node_stake
        assert chain.get_node_by_peer_id(sid, op.node_key.peer_id).node_id == nid
        assert chain.get_node_by_hotkey(sid, op.hotkey.address).node_id == nid
        assert chain.get_stake(sid, op.hotkey.address) == scenario["backend"].node_stake
    assert chain.get_node_by_peer_id(sid, NodeKey.generate().peer_id) is None


def test_activate_and_elect(scenario):
    sid, chain, backend = scenario["sid"], scenario["owner"], scenario["backend"]
    receipt = chain.activate_subnet(sid)
    assert receipt.ok
    assert chain.get_subnet(sid).state == SubnetState.ACTIVE
    # Elections start at the subnet's start epoch: the next one on devnet, up to two later on Hypertensor.
    for _ in range(3):
        info = backend.next_epoch(chain, sid)
        elected = chain.get_elected_validator(sid, info.epoch)
        if elected is not None:
            break
    assert elected in scenario["ops"]
    r = chain.get_epoch_randomness(sid, info.epoch)
    assert len(r) == 32 and r == chain.get_epoch_randomness(sid, info.epoch)
    assert 0 <= info.progress < 1 and info.blocks_per_epoch > 0


def test_propose_attest_submission_rewards(active_scenario):
    scenario = active_scenario
    sid, ops, chain, backend = scenario["sid"], scenario["ops"], scenario["owner"], scenario["backend"]
    e, elected = scenario["epoch"].epoch, scenario["elected"]  # early in e: time to propose and attest
    assert elected in ops
    others = [nid for nid in sorted(ops) if nid != elected]
    with pytest.raises(NotElectedError):
        ops[others[0]].chain.propose_attestation(sid, [ScoreEntry(nid, UNIT) for nid in sorted(ops)])
    stakes_before = {nid: chain.get_stake(sid, op.hotkey.address) for nid, op in ops.items()}
    scores = {nid: (i + 1) * UNIT // 10 for i, nid in enumerate(sorted(ops))}
    receipt = ops[elected].chain.propose_attestation(sid, [ScoreEntry(n, s) for n, s in sorted(scores.items())])
    assert receipt.ok
    with pytest.raises(AlreadyProposedError):
        ops[elected].chain.propose_attestation(sid, [ScoreEntry(n, s) for n, s in sorted(scores.items())])
    for nid in others:
        assert ops[nid].chain.attest(sid).ok
    with pytest.raises(AlreadyAttestedError):
        ops[others[0]].chain.attest(sid)
    sub = chain.get_consensus_submission(sid, e)
    assert sub is not None and sub.validator_node_id == elected and sub.epoch == e
    assert [(x.node_id, x.score) for x in sub.data] == sorted(scores.items())
    assert set(sub.attestations) == set(ops)
    backend.next_epoch(chain, sid)  # settle
    after = {nid: chain.get_stake(sid, op.hotkey.address) for nid, op in ops.items()}
    assert after[elected] > stakes_before[elected]  # at least the validator's reward
    assert all(after[n] >= stakes_before[n] for n in ops)
    for n in chain.get_subnet_nodes(sid):
        if n.node_id in ops:
            assert n.reputation > 0 and n.node_class == NodeClass.VALIDATOR
    if backend.name == "devnet":
        gains = [after[n] - stakes_before[n] - (UNIT if n == elected else 0) for n in sorted(ops)]
        assert gains == sorted(gains) and gains[0] > 0  # proportional to the increasing scores


def test_balance_reads(scenario):
    chain = scenario["owner"]
    op = next(iter(scenario["ops"].values()))
    assert chain.get_balance(op.coldkey.address) > 0
    assert chain.get_balance(AccountKey.generate().address) == 0
    with pytest.raises(ChainError):
        op.chain.register_subnet_node(
            scenario["sid"], hotkey=op.hotkey.address, peer_id=op.node_key.peer_id, stake=scenario["backend"].node_stake
        )


def test_add_stake_and_update_peer_info(active_scenario):
    sid, ops, chain = active_scenario["sid"], active_scenario["ops"], active_scenario["owner"]
    nid, op = sorted(ops.items())[-1]
    before = op.chain.get_stake(sid, op.hotkey.address)
    op.chain.add_stake(sid, nid, hotkey=op.hotkey.address, amount=5 * UNIT)
    assert op.chain.get_stake(sid, op.hotkey.address) == before + 5 * UNIT
    new_key = NodeKey.generate()
    op.chain.update_peer_info(sid, nid, peer_id=new_key.peer_id)
    assert chain.get_node_by_peer_id(sid, new_key.peer_id).node_id == nid
    assert chain.get_node_by_hotkey(sid, op.hotkey.address).peer_id == new_key.peer_id
    op.node_key = new_key
