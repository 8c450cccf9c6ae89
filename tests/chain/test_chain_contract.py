"""One contract for `chain.Chain`, run against every backend available.

Devnet always (a real chain process); Hypertensor when MESH_HYPERTENSOR_WS points at a
node (e.g. chopsticks running the public testnet spec). One full round: register a subnet
and nodes, activate, read the elected validator, propose, attest, see the submission,
rewards and reputation. Each test makes its own subnet on the module's chain (fixtures
`scenario`: registered; `active_scenario`: activated, in an epoch with an elected
validator), so any test runs alone or in any order.
"""

from __future__ import annotations

import json

import pytest
from chain_backends import DevnetBackend, hypertensor_url

from chain.types import (
    UNIT,
    AlreadyAttestedError,
    AlreadyProposedError,
    ChainError,
    NodeClass,
    NotElectedError,
    NotValidatorError,
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
    with backend.chain() as reader:  # on Hypertensor the registration cost doubles with every registration
        cost = reader.registration_cost() or 0
    owner = backend.funded_account(5000 * UNIT + backend.delegate_stake + 2 * cost)
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
        # Delegate stake first: without it the subnet earns no node emissions (Hypertensor's rule, and the devnet's).
        assert s["owner"].add_delegate_stake(s["sid"], backend.delegate_stake).ok
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
    assert chain.add_delegate_stake(sid, backend.delegate_stake).ok  # Hypertensor activates only a backed subnet
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
    # Node rewards follow the scores (the subnet has delegate stake): compare the nodes that did not propose.
    assert_proportional({n: after[n] - stakes_before[n] for n in others}, {n: scores[n] for n in others})


def assert_proportional(gains: dict[int, int], scores: dict[int, int]) -> None:
    """Each node's reward / its score is the same for every node (to rounding), and not zero."""
    rates = {n: gains[n] / scores[n] for n in gains}
    assert min(rates.values()) > 0, gains
    assert max(rates.values()) <= min(rates.values()) * 1.01 + 1e-9, (gains, scores)


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


def test_no_node_rewards_without_delegate_stake(backend):
    """Hypertensor pays node emissions only to subnets with delegate stake; the devnet applies the same rule."""
    s = _registered_subnet(backend)
    try:
        sid, ops, chain = s["sid"], s["ops"], s["owner"]
        assert chain.get_subnet_delegate_stake(sid) == 0
        try:
            chain.activate_subnet(sid)
        except ChainError as e:  # Hypertensor (Hoskinson runtime): a subnet without delegate stake cannot activate
            assert backend.name == "hypertensor" and "ActivationConditions" in e.reason, e
            return
        info, elected = elected_epoch(backend, chain, sid, max_progress=ROUND_MAX_PROGRESS)
        before = {nid: chain.get_stake(sid, op.hotkey.address) for nid, op in ops.items()}
        _round(s, ops, elected, {nid: UNIT for nid in ops})
        backend.next_epoch(chain, sid)
        assert all(chain.get_stake(sid, op.hotkey.address) == before[nid] for nid, op in ops.items() if nid != elected)
    finally:
        _close(s)


def _round(s: dict, voters: dict, elected: int, scores: dict[int, int]) -> None:
    """`elected` proposes `scores`; every other node of `voters` that may attest does."""
    voters[elected].chain.propose_attestation(s["sid"], [ScoreEntry(n, v) for n, v in sorted(scores.items())])
    for nid, op in voters.items():
        if nid != elected:
            try:
                op.chain.attest(s["sid"])
            except NotValidatorError:  # not (yet) in the epoch's validator snapshot
                pass


def _cli_json(capsys, argv: list[str]) -> dict:
    from subnet.node.cli import main

    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_node_joining_active_subnet_reaches_validator_and_is_paid(active_scenario, tmp_path, capsys):
    """A node registered (through the CLI) after activation goes Registered -> Idle -> Included -> Validator while
    the initial nodes keep proposing every epoch; `status --json` is right at every step; once a Validator it is
    paid in proportion to its score."""
    s = active_scenario
    sid, ops, chain, backend = s["sid"], s["ops"], s["owner"], s["backend"]
    new = Operator(backend, 4)
    s["_ops"].append(new)
    cold = str(new.coldkey.save(tmp_path / "cold.json"))
    hot = str(new.hotkey.save(tmp_path / "hot.json"))
    new.node_key.save(tmp_path / "node.key")
    maddr = f"/ip4/203.0.113.7/tcp/31330/p2p/{new.node_key.peer_id}"
    url = ["--chain", backend.url, "--subnet-id", str(sid)]
    reg = _cli_json(capsys, ["register", *url, "--account-key", cold, "--hotkey-key", hot, "--node-key",
                             str(tmp_path / "node.key"), "--multiaddr", maddr, "--json"])  # fmt: skip
    nid = reg["node_id"]
    assert reg["node_class"] == "REGISTERED" and nid not in ops and reg["peer_id"] == new.node_key.peer_id
    voters = {**ops, nid: new}
    # Registration's own answer is the first class seen: on a loaded machine the first status call can
    # come after the next epoch began, when the devnet has already moved the node on to Idle.
    seen: list[str] = [reg["node_class"]]
    for _ in range(backend.join_epochs):
        st = _cli_json(capsys, ["status", *url, "--hotkey", new.hotkey.address, "--json"])
        assert st["registered"] and st["node_id"] == nid and st["peer_id"] == new.node_key.peer_id
        # (the Hoskinson testnet runtime stores peer ids only, no node multiaddr: there it reads back empty)
        assert st["multiaddr"] == maddr or (backend.name == "hypertensor" and st["multiaddr"] == "")
        assert st["stake"] >= backend.node_stake and st["subnet_delegate_stake"] > 0
        if not seen or seen[-1] != st["node_class"]:
            seen.append(st["node_class"])
        if st["node_class"] == "VALIDATOR":
            break
        cls = NodeClass[st["node_class"]]
        scores = {n: UNIT for n in ops} | ({nid: UNIT} if cls >= NodeClass.INCLUDED else {})
        # The round's epoch is read now, not carried over from the last loop: on a loaded machine the
        # status call above can outlast a 4 s devnet epoch, and a round sent into the next epoch
        # leaves the previous one without a proposal.
        info, elected = elected_epoch(backend, chain, sid, max_progress=ROUND_MAX_PROGRESS)
        if elected not in ops:  # the newcomer, elected as soon as it became a Validator: the next status says so
            continue
        _round(s, ops, elected, scores)  # the newcomer attests only once a Validator (Hypertensor refuses it before)
        backend.next_epoch(chain, sid)
        assert chain.get_consensus_submission(sid, info.epoch) is not None, f"no proposal in epoch {info.epoch}"
    assert seen[-1] == "VALIDATOR", seen
    assert [c for c in ("REGISTERED", "IDLE", "INCLUDED", "VALIDATOR") if c in seen] == seen  # never backwards
    if backend.name == "devnet":
        assert seen == ["REGISTERED", "IDLE", "INCLUDED", "VALIDATOR"]
    # Paid by score: a round early in a fresh epoch with distinct scores, then compare non-proposers.
    info, elected = elected_epoch(backend, chain, sid, max_progress=ROUND_MAX_PROGRESS)
    before = {n: chain.get_stake(sid, op.hotkey.address) for n, op in voters.items()}
    scores = {n: (i + 1) * UNIT // 10 for i, n in enumerate(sorted(voters))}
    _round(s, voters, elected, scores)
    backend.next_epoch(chain, sid)
    others = [n for n in voters if n != elected]
    assert nid in others or elected == nid
    gains = {n: chain.get_stake(sid, voters[n].hotkey.address) - before[n] for n in others}
    assert_proportional(gains, {n: scores[n] for n in others})
    st = _cli_json(capsys, ["status", *url, "--node-key", str(tmp_path / "node.key"), "--json"])
    assert st["node_class"] == "VALIDATOR" and st["last_score"]["score"] == scores[nid]
