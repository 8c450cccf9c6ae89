"""A validator killed (SIGKILL) between its score commit and its proposal, then restarted, proposes
exactly once and still reveals: real node processes (`mesh-node --validator`) on a devnet chain.

The validator elected for epoch E commits its score set of E-1 during E-1; the test kills it
right after that commit is journaled (validator/journal.py), restarts it with the same keys
and data dir, and checks: one `proposed` for E in its logs, the chain's proposal for E is the
journaled set, the epoch is accepted by the other validators, and its reveal of the E-1
commit is on the DHT in E and verifies against the commitment.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.validator.support import ChainNet, Node

pytestmark = [pytest.mark.slow, pytest.mark.long, pytest.mark.timeout(1200)]

# 30 s epochs. The victim is killed once its commit of E-1 is journaled (about block 13 of 20) and must be
# back before E's propose window closes (block 3 of E): about 10 blocks. The chain holds its blocks while the
# victim restarts (DevnetProcess.hold_blocks), so a slow restart cannot miss that window.
BLOCK_TIME, EPOCH_LENGTH = 1.5, 20
START_TIMEOUT = 240.0


def predicted_elected(cfg: dict, subnet_id: int, epoch: int, ids: list[int]) -> int:
    """The devnet's election for `epoch`, computed ahead from its (public, deterministic) block randomness."""
    r = hashlib.sha256(b"genesis:" + cfg["genesis_seed"].encode()).digest()
    for b in range(1, epoch * cfg["epoch_length"] + 1):
        r = hashlib.sha256(r + b.to_bytes(8, "big")).digest()
    er = hashlib.sha256(b"epoch" + r + subnet_id.to_bytes(8, "big") + epoch.to_bytes(8, "big")).digest()
    return sorted(ids)[int.from_bytes(er, "big") % len(ids)]


class Proc:
    """One `mesh-node` node process; its stdout+stderr go to numbered log files (one per start)."""

    def __init__(self, argv: list[str], log_dir: Path, name: str):
        self.argv, self.log_dir, self.name, self.starts = argv, log_dir, name, 0
        self.proc: subprocess.Popen | None = None

    @property
    def log(self) -> Path:
        return self.log_dir / f"{self.name}.{self.starts}.log"

    def start(self) -> Proc:
        self.starts += 1
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen(self.argv, stdout=f, stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "READY " in self.log.read_text():
                return
            assert self.proc.poll() is None, f"{self.name} exited:\n{self.log.read_text()[-3000:]}"
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready:\n{self.log.read_text()[-3000:]}")

    def logs(self) -> str:
        return "".join((self.log_dir / f"{self.name}.{i}.log").read_text() for i in range(1, self.starts + 1))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _journal(path: Path) -> dict:
    try:
        return json.loads(path.read_text())["epochs"]
    except (OSError, ValueError, KeyError):
        return {}


def test_elected_validator_killed_between_commit_and_proposal(tmp_path, tiny_llama):
    from chain.types import NodeClass
    from consensus.phases import REVEAL_END, RecordKind
    from subnet.swarm.chain_view import ChainRegistry
    from subnet.swarm.record_admission import ConsensusRecordPolicy
    from subnet.swarm.record_store import fetch_records, fetch_reveals
    from validator.journal import journal_path
    from validator.verify import VALID, verify_validator_reveals

    (tmp_path / "chain").mkdir()
    net = ChainNet(tmp_path / "chain", block_time=BLOCK_TIME, epoch_length=EPOCH_LENGTH)
    procs: list[Proc] = []
    boot = None
    try:
        ops = [net.add_operator() for _ in range(3)]  # two hoster+validators and one validator
        boot = Node(net, net.add_operator(register=False), [])  # a plain DHT peer to join through
        by_id = {}
        for i, op in enumerate(ops):
            d = tmp_path / f"node{i}"
            d.mkdir()
            op.node_key.save(d / "node.key")
            op.hotkey.save(d / "hotkey.json")
            argv = [sys.executable, "-m", "subnet.node.cli", "--validator", "--model", tiny_llama,
                    "--chain", net.url, "--subnet-id", str(net.subnet_id), "--node-key", str(d / "node.key"),
                    "--account-key", str(d / "hotkey.json"), "--initial-peers", boot.maddrs[0]]  # fmt: skip
            if i < 2:
                argv += ["--hoster", "--blocks", "0:8"]
            procs.append(Proc(argv, tmp_path, f"node{i}").start())
            by_id[op.node_id] = (op, procs[-1], d)
        for p in procs:
            p.wait_ready()
        net.activate()
        cfg = net.owner.chain_info()["config"]
        sid = net.subnet_id
        info = net.wait_epoch(net.epoch_info().epoch + 1)
        ids = [n.node_id for n in net.owner.get_subnet_nodes(sid) if n.node_class == NodeClass.VALIDATOR]
        assert sorted(ids) == sorted(by_id)
        assert predicted_elected(cfg, sid, info.epoch, ids) == net.owner.get_elected_validator(sid, info.epoch)
        # The target epoch E is two ahead (every validator scores E-1 whole); its elected validator is the
        # victim, hoster+validator or validator-only alike. (Waiting for the validator-only node to be elected
        # cost up to 6 more 50 s epochs.)
        E = info.epoch + 2
        victim_id = predicted_elected(cfg, sid, E, ids)
        victim, proc, data_dir = by_id[victim_id]
        jpath = journal_path(data_dir, sid)

        # Kill it (SIGKILL: no clean shutdown) as soon as its commit of E-1 is journaled, before E starts.
        deadline = time.monotonic() + (E - info.epoch + 1) * EPOCH_LENGTH * BLOCK_TIME * 2
        while (_journal(jpath).get(str(E - 1)) or {}).get("score_committed_block") is None:
            assert time.monotonic() < deadline, f"no journaled commit of epoch {E - 1}:\n{proc.logs()[-3000:]}"
            time.sleep(0.05)
        proc.proc.kill()
        proc.proc.wait(timeout=30)
        killed_at = net.epoch_info()
        assert killed_at.epoch == E - 1, f"killed too late: {killed_at}"
        committed = _journal(jpath)[str(E - 1)]
        assert committed["proposal"], committed
        # Chain time stands still while the victim restarts: its start-up (imports, model, DHT) took 47 s on
        # this machine under a full 4-worker run, longer than the 10 blocks it has before E's propose window
        # closes. What is tested is what the journal restores, not how fast a loaded machine restarts.
        held_at = net.proc.hold_blocks()
        assert held_at < E * EPOCH_LENGTH, f"killed too late: block {held_at}"
        proc.start()  # same keys, same data dir
        proc.wait_ready()
        net.proc.resume_blocks()

        # No lost reveal: read (while the chain is in E, as record admission requires) the commits of E-1 and
        # the reveals of E from the DHT, and verify them as every validator does.
        net.wait_progress(REVEAL_END + 2 / EPOCH_LENGTH, 0.97, epoch=E, timeout=EPOCH_LENGTH * BLOCK_TIME * 3)
        policy = ConsensusRecordPolicy(sid, ChainRegistry(lambda: net.client(), sid))
        commits = fetch_records(boot.dht, policy, E - 1, RecordKind.VALIDATOR_COMMIT)
        assert victim.peer_id in commits and commits[victim.peer_id].payload["commit"] == committed["score_commit"]
        reveals, problems = fetch_reveals(boot.dht, policy, E, RecordKind.VALIDATOR_REVEAL,
                                          {p: r.payload["parts"] for p, r in commits.items()})
        verified = verify_validator_reveals(sid, E - 1, commits, reveals, problems)
        assert verified.status.get(victim.peer_id) == VALID, verified.status

        net.wait_epoch(E + 1, timeout=EPOCH_LENGTH * BLOCK_TIME * 4)
        logs = proc.logs()
        proposals = [ln for ln in logs.splitlines() if re.search(rf" proposed epoch={E}( |$)", ln)]
        assert len(proposals) == 1, proposals  # exactly one proposal for E, by the restarted process
        assert "propose_failed" not in logs and f"validator_epoch_restored epoch={E - 1} " in logs
        assert f"scores_revealed epoch={E - 1} " in logs
        assert _journal(jpath)[str(E - 1)]["score_revealed_block"] is not None
        sub = net.owner.get_consensus_submission(sid, E)
        assert sub is not None and sub.validator_node_id == victim_id
        assert [[x.node_id, x.score] for x in sub.data] == committed["proposal"]  # the set journaled before the kill
        result = net.owner.get_epoch_result(sid, E)
        assert result["outcome"] == "accepted", result  # the others agreed with the restored set
    finally:
        for p in procs:
            p.stop()
        if boot is not None:
            boot.dht.shutdown()
        net.close()
