"""Devnet pallet rules, exercised in-process on the real SQLite state (fast)."""

from __future__ import annotations

import pytest
from chain_support import Operator, make_subnet, register

from chain.devnet.config import dev_accounts
from chain.types import (
    UNIT,
    AlreadyAttestedError,
    AlreadyProposedError,
    ChainError,
    InsufficientBalanceError,
    InsufficientStakeError,
    NodeClass,
    NotElectedError,
    SubnetState,
    UnknownNodeError,
)
from keys import AccountKey


def data(scores: dict[int, int]) -> list[dict]:
    return [{"node_id": n, "score": str(s)} for n, s in scores.items()]


def elected_op(tx, sid, ops):
    nid = tx.state.elected(sid, tx.epoch())
    assert nid is not None
    return nid, ops[nid]


def test_genesis_funds_dev_accounts(state, dev_keys):
    assert state.balance(dev_keys[0].address) == state.config.dev_balance
    assert state.balance(AccountKey.generate().address) == 0
    assert state.block() == 0


def test_register_subnet_and_initial_nodes_are_validators(tx, dev_keys):
    sid = make_subnet(tx, dev_keys[0])
    info = tx.state.subnet(sid)
    assert info.state == SubnetState.REGISTERED and info.owner == dev_keys[0].address
    op = Operator(dev_keys[1])
    before = tx.state.balance(op.coldkey.address)
    nid = register(tx, sid, op, 150 * UNIT)
    node = tx.state.node(sid, nid)
    assert node.node_class == NodeClass.VALIDATOR and node.stake == 150 * UNIT
    assert node.hotkey == op.hotkey.address and node.coldkey == op.coldkey.address
    assert tx.state.balance(op.coldkey.address) == before - 150 * UNIT - tx.state.config.node_registration_burn
    assert tx.state.node_by_peer_id(sid, op.peer_id).node_id == nid
    assert tx.state.stake(sid, op.hotkey.address) == 150 * UNIT


def test_register_node_rejections(tx, dev_keys):
    sid = make_subnet(tx, dev_keys[0])
    op = Operator(dev_keys[1])
    register(tx, sid, op)
    dup_peer = Operator(dev_keys[2])
    dup_peer.node_key = op.node_key
    with pytest.raises(ChainError, match="PeerIdTaken"):
        register(tx, sid, dup_peer)
    with pytest.raises(InsufficientStakeError):
        register(tx, sid, Operator(dev_keys[2]), 99 * UNIT)
    with pytest.raises(InsufficientStakeError):
        register(tx, sid, Operator(dev_keys[2]), 1001 * UNIT)
    same = Operator(dev_keys[3])
    same.hotkey = same.coldkey
    with pytest.raises(ChainError, match="HotkeyIsColdkey"):
        register(tx, sid, same)
    poor = Operator(AccountKey.generate())
    tx(dev_keys[0], "transfer", to=poor.coldkey.address, amount=str(50 * UNIT))
    with pytest.raises(InsufficientBalanceError):
        register(tx, sid, poor)


def test_election_is_uniform_over_validators_and_fixed_per_epoch(tx, subnet4):
    sid, ops = subnet4
    seen = set()
    for _ in range(12):
        e = tx.epoch()
        nid = tx.state.elected(sid, e)
        assert nid in ops
        assert tx.state.snapshot(sid, e) == sorted(ops)
        r = tx.state.epoch_randomness(sid, e)
        assert nid == sorted(ops)[int.from_bytes(r, "big") % 4]
        seen.add(nid)
        _full_round(tx, sid, ops, {i: UNIT for i in ops}, attestors=3)
        assert tx.state.elected(sid, e) == nid  # stored, never recomputed
    assert len(seen) >= 2


def test_only_elected_proposes_once_and_canonicalisation(tx, subnet4, dev_keys):
    sid, ops = subnet4
    late = Operator(dev_keys[6])
    late_id = register(tx, sid, late)  # queued: class Registered, below Included
    nid, v = elected_op(tx, sid, ops)
    other = next(o for i, o in ops.items() if i != nid)
    with pytest.raises(NotElectedError):
        tx(other.hotkey, "propose_attestation", subnet_id=sid, data=[])
    with pytest.raises(UnknownNodeError):
        tx(v.coldkey, "propose_attestation", subnet_id=sid, data=[])  # coldkey is not a node hotkey
    ids = sorted(ops)
    raw = [
        {"node_id": ids[3], "score": "5"}, {"node_id": ids[0], "score": "9"}, {"node_id": ids[0], "score": "7"},
        {"node_id": late_id, "score": "100"}, {"node_id": 999, "score": "1"}, {"node_id": ids[1], "score": "3"},
    ]  # fmt: skip
    tx(v.hotkey, "propose_attestation", subnet_id=sid, data=raw)
    sub = tx.state.submission(sid, tx.epoch())
    assert [(e.node_id, e.score) for e in sub.data] == [(ids[0], 7), (ids[1], 3), (ids[3], 5)]
    assert sub.validator_node_id == nid and set(sub.attestations) == {nid}
    with pytest.raises(AlreadyProposedError):
        tx(v.hotkey, "propose_attestation", subnet_id=sid, data=[])


def test_attest_once_by_snapshot_validators(tx, subnet4, dev_keys):
    sid, ops = subnet4
    nid, v = elected_op(tx, sid, ops)
    other_id, other = next((i, o) for i, o in ops.items() if i != nid)
    with pytest.raises(ChainError, match="NoSubmission"):
        tx(other.hotkey, "attest", subnet_id=sid)
    tx(v.hotkey, "propose_attestation", subnet_id=sid, data=data({i: UNIT for i in ops}))
    tx(other.hotkey, "attest", subnet_id=sid)
    with pytest.raises(AlreadyAttestedError):
        tx(other.hotkey, "attest", subnet_id=sid)
    with pytest.raises(AlreadyAttestedError):
        tx(v.hotkey, "attest", subnet_id=sid)  # the proposer already counts
    late = Operator(dev_keys[6])
    register(tx, sid, late)
    with pytest.raises(ChainError, match="NotValidator"):
        tx(late.hotkey, "attest", subnet_id=sid)
    assert set(tx.state.submission(sid, tx.epoch()).attestations) == {nid, other_id}


def _full_round(tx, sid, ops, scores, attestors: int) -> tuple[int, int]:
    """Elected proposes `scores`, `attestors` other validators attest; settle; return (epoch, validator)."""
    e = tx.epoch()
    nid, v = elected_op(tx, sid, ops)
    tx(v.hotkey, "propose_attestation", subnet_id=sid, data=data(scores))
    for i in [i for i in sorted(ops) if i != nid][:attestors]:
        tx(ops[i].hotkey, "attest", subnet_id=sid)
    tx.advance_to_epoch(e + 1)
    return e, nid


def test_rewards_split_by_score_when_attested(tx, subnet4):
    sid, ops = subnet4
    ids = sorted(ops)
    before = {i: tx.state.node(sid, i).stake for i in ids}
    scores = {ids[0]: 1 * UNIT, ids[1]: 3 * UNIT, ids[2]: 0, ids[3]: 4 * UNIT}
    e, v = _full_round(tx, sid, ops, scores, attestors=2)  # 3 of 4 = 0.75 >= 0.66
    cfg = tx.state.config
    result = tx.state.epoch_result(sid, e)
    assert result["outcome"] == "accepted" and result["attestors"] == 3 and result["validators"] == 4
    total = 8 * UNIT
    for i in ids:
        expect = cfg.node_emission * scores[i] // total + (cfg.validator_base_reward if i == v else 0)
        assert tx.state.node(sid, i).stake - before[i] == expect
    # the split follows the scores: node 3 earns 4x node 0
    gain = {i: tx.state.node(sid, i).stake - before[i] - (cfg.validator_base_reward if i == v else 0) for i in ids}
    assert gain[ids[3]] == 4 * gain[ids[0]] and gain[ids[2]] == 0


def test_no_rewards_and_slash_below_threshold(tx, subnet4):
    sid, ops = subnet4
    ids = sorted(ops)
    before = {i: tx.state.node(sid, i) for i in ids}
    e, v = _full_round(tx, sid, ops, {i: UNIT for i in ids}, attestors=1)  # 2 of 4 = 0.5 < 0.66
    cfg = tx.state.config
    assert tx.state.epoch_result(sid, e)["outcome"] == "rejected"
    stake = before[v].stake
    slash = min(stake * 3125 * (66 * 4 - 100 * 2) // (100_000 * 66 * 4), cfg.max_slash)
    assert slash > 0
    attestor = [i for i in ids if i != v][0]
    for i in ids:
        node = tx.state.node(sid, i)
        if i == v:
            assert node.stake == stake - slash
        else:
            assert node.stake == before[i].stake  # nobody is paid
        punished = i in (v, attestor)
        assert node.reputation == pytest.approx(1.0 - cfg.reputation_penalty if punished else 1.0)


def test_slash_formula_caps_at_one_tensor(tx, dev_keys):
    sid = make_subnet(tx, dev_keys[0])
    ops = {}
    for i in range(3):
        op = Operator(dev_keys[i + 1])
        ops[register(tx, sid, op, 1000 * UNIT)] = op
    tx(dev_keys[0], "activate_subnet", subnet_id=sid)
    tx.advance_to_epoch(tx.epoch() + 1)
    # 1000 TENSOR * 3.125% * (1 - (1/3)/0.66) = 15.5 TENSOR -> capped at 1 TENSOR
    e, v = _full_round(tx, sid, ops, {i: UNIT for i in ops}, attestors=0)
    assert tx.state.epoch_result(sid, e)["outcome"] == "rejected"
    assert tx.state.node(sid, v).stake == 999 * UNIT


def test_absent_validator_and_absent_nodes_lose_reputation_then_removed(tx, subnet4):
    sid, ops = subnet4
    cfg = tx.state.config
    ids = sorted(ops)
    e = tx.epoch()
    v = tx.state.elected(sid, e)
    tx.advance_to_epoch(e + 1)  # elected validator proposed nothing
    assert tx.state.epoch_result(sid, e)["outcome"] == "no_proposal"
    assert tx.state.node(sid, v).reputation == pytest.approx(1.0 - cfg.reputation_penalty)
    # accepted data that leaves out one node: that node loses reputation every epoch until removed
    victim = None
    for _ in range(8):
        nid, vop = elected_op(tx, sid, ops)
        alive = [n.node_id for n in tx.state.nodes(sid)]
        victim = victim or next(i for i in ids if i != nid and i in alive)
        if nid == victim:
            tx.advance_to_epoch(tx.epoch() + 1)
            continue
        _full_round(tx, sid, {i: ops[i] for i in alive}, {i: UNIT for i in alive if i != victim}, attestors=3)
        if tx.state.node(sid, victim) is None:
            break
    assert tx.state.node(sid, victim) is None
    coldkey = ops[victim].coldkey.address
    assert any(int(u["amount"]) >= 100 * UNIT for u in tx.state.unbondings(coldkey))


def test_class_progression_queue_idle_included_validator(tx, subnet4, dev_keys):
    sid, ops = subnet4
    cfg = tx.state.config
    late = Operator(dev_keys[6])
    lid = register(tx, sid, late)
    assert tx.state.node(sid, lid).node_class == NodeClass.REGISTERED
    classes = []
    for _ in range(10):
        node = tx.state.node(sid, lid)
        classes.append(node.node_class)
        if node.node_class == NodeClass.VALIDATOR:
            break
        ids = sorted(ops) + ([lid] if node.node_class >= NodeClass.INCLUDED else [])
        _full_round(tx, sid, ops, {i: UNIT for i in ids}, attestors=3)
    # queue_epochs=1 -> Idle; 2 accepted epochs -> Included; 2 accepted epochs in data w/ full reputation -> Validator
    assert classes == [
        NodeClass.REGISTERED,
        *[NodeClass.IDLE] * cfg.idle_epochs,
        *[NodeClass.INCLUDED] * cfg.included_epochs,
        NodeClass.VALIDATOR,
    ]
    e = tx.epoch()
    assert lid in tx.state.snapshot(sid, e)


def test_classes_do_not_rise_without_consensus(tx, subnet4, dev_keys):
    sid, ops = subnet4
    late = Operator(dev_keys[6])
    lid = register(tx, sid, late)
    tx.advance_to_epoch(tx.epoch() + 2)
    assert tx.state.node(sid, lid).node_class == NodeClass.IDLE
    tx.advance_to_epoch(tx.epoch() + 4)  # no proposals at all
    assert tx.state.node(sid, lid).node_class == NodeClass.IDLE


def test_churn_limit(tx, dev_keys):
    from chain.devnet.config import DevnetConfig
    from chain.devnet.state import ChainState

    st = ChainState(tx.state.path + ".churn", DevnetConfig(epoch_length=4, churn_limit=2))
    from chain_support import Signer

    t = Signer(st)
    sid = make_subnet(t, dev_keys[0])
    register(t, sid, Operator(dev_keys[1]))
    t(dev_keys[0], "activate_subnet", subnet_id=sid)
    late = [register(t, sid, Operator(dev_keys[2 + i])) for i in range(5)]
    t.advance_to_epoch(t.epoch() + 1)
    idle = [i for i in late if st.node(sid, i).node_class == NodeClass.IDLE]
    assert idle == late[:2]
    t.advance_to_epoch(t.epoch() + 1)
    assert [i for i in late if st.node(sid, i).node_class == NodeClass.IDLE] == late[:4]
    st.close()


def test_stake_unbonding_and_claim(tx, subnet4):
    sid, ops = subnet4
    nid, op = next(iter(ops.items()))
    ck = op.coldkey
    bal = tx.state.balance(ck.address)
    tx(ck, "add_stake", subnet_id=sid, node_id=nid, hotkey=op.hotkey.address, amount=str(50 * UNIT))
    assert tx.state.stake(sid, op.hotkey.address) == 150 * UNIT
    assert tx.state.balance(ck.address) == bal - 50 * UNIT
    with pytest.raises(InsufficientStakeError):
        tx(ck, "remove_stake", subnet_id=sid, hotkey=op.hotkey.address, amount=str(51 * UNIT))  # below min
    out = tx(ck, "remove_stake", subnet_id=sid, hotkey=op.hotkey.address, amount=str(50 * UNIT))
    assert tx.state.stake(sid, op.hotkey.address) == 100 * UNIT
    assert tx(ck, "claim_unbondings")["claimed"] == "0"  # still unbonding
    tx.advance_to_epoch(out["unlock_epoch"])
    assert tx(ck, "claim_unbondings")["claimed"] == str(50 * UNIT)
    assert tx.state.balance(ck.address) == bal


def test_update_peer_info_and_remove_node(tx, subnet4):
    sid, ops = subnet4
    (a, opa), (b, opb) = list(ops.items())[:2]
    new = Operator(opa.coldkey)
    tx(opa.coldkey, "update_peer_info", subnet_id=sid, node_id=a, peer_id=new.peer_id, multiaddr="/ip4/1.2.3.4")
    assert tx.state.node(sid, a).peer_id == new.peer_id
    with pytest.raises(ChainError, match="PeerIdTaken"):
        tx(opa.coldkey, "update_peer_info", subnet_id=sid, node_id=a, peer_id=opb.peer_id)
    tx(opa.coldkey, "remove_subnet_node", subnet_id=sid, node_id=a)
    assert tx.state.node(sid, a) is None and tx.state.node_by_peer_id(sid, new.peer_id) is None


def test_reopen_keeps_height_and_genesis_rules(tmp_path, dev_keys):
    from chain.devnet.config import DevnetConfig
    from chain.devnet.state import ChainState

    st = ChainState(tmp_path / "c.db", DevnetConfig(epoch_length=4, block_time=1.0))
    for _ in range(7):
        st.produce_block()
    chain_id, r7 = st.chain_id, st.block_randomness(7)
    st.close()
    st = ChainState(tmp_path / "c.db", DevnetConfig(epoch_length=99, block_time=0.2))
    assert st.block() == 7 and st.chain_id == chain_id and st.block_randomness(7) == r7
    assert st.config.epoch_length == 4 and st.config.block_time == 0.2
    assert st.produce_block() == 8
    st.close()


def test_no_delegate_stake_no_node_emissions(tx, subnet4):
    """As on Hypertensor: once the subnet's delegate stake is withdrawn, an accepted epoch pays no node emission."""
    sid, ops = subnet4
    owner = dev_accounts(1)[0]
    assert tx.state.delegate_stake(sid) == 100 * UNIT
    out = tx(owner, "remove_delegate_stake", subnet_id=sid, amount=str(100 * UNIT))
    assert tx.state.delegate_stake(sid) == 0 and tx.state.delegate_stake(sid, owner.address) == 0
    assert {"amount": str(100 * UNIT), "unlock_epoch": out["unlock_epoch"]} in tx.state.unbondings(owner.address)
    ids = sorted(ops)
    e, v = _full_round(tx, sid, ops, {i: UNIT for i in ids}, attestors=3)
    result = tx.state.epoch_result(sid, e)
    assert result["outcome"] == "accepted"
    assert [r["kind"] for r in result["rewards"]] == ["validator"]  # the proposer's base reward only
    # Delegating again restores node emissions from the next accepted epoch on.
    tx(owner, "add_to_delegate_stake", subnet_id=sid, amount=str(UNIT))
    e, v = _full_round(tx, sid, ops, {i: UNIT for i in ids}, attestors=3)
    kinds = [r["kind"] for r in tx.state.epoch_result(sid, e)["rewards"]]
    assert kinds.count("emission") == 4


def test_delegate_stake_rejections(tx, subnet4):
    sid, _ = subnet4
    someone = dev_accounts(9)[8]
    with pytest.raises(ChainError, match="InsufficientStake"):
        tx(someone, "remove_delegate_stake", subnet_id=sid, amount=str(UNIT))
    with pytest.raises(ChainError, match="UnknownSubnet"):
        tx(someone, "add_to_delegate_stake", subnet_id=999, amount=str(UNIT))
    with pytest.raises(ChainError, match="InsufficientBalance"):
        tx(AccountKey.generate(), "add_to_delegate_stake", subnet_id=sid, amount=str(UNIT))
    with pytest.raises(ChainError, match="InvalidRequest"):
        tx(someone, "add_to_delegate_stake", subnet_id=sid, amount="0")


def test_registration_caps(tx, dev_keys):
    cfg = tx.state.config
    with pytest.raises(ChainError, match="CostExceedsMax"):
        tx(dev_keys[0], "register_subnet", name="capped", min_stake=str(100 * UNIT), max_stake=str(1000 * UNIT),
           max_cost=str(cfg.subnet_registration_cost - 1))  # fmt: skip
    sid = make_subnet(tx, dev_keys[0])
    op = Operator(dev_keys[1])
    with pytest.raises(ChainError, match="BurnExceedsMax"):
        tx(op.coldkey, "register_subnet_node", subnet_id=sid, hotkey=op.hotkey.address, peer_id=op.peer_id,
           stake=str(100 * UNIT), max_burn=str(cfg.node_registration_burn - 1))  # fmt: skip
    assert tx.state.node_by_peer_id(sid, op.peer_id) is None
