"""Test helpers: a real devnet chain process with a subnet and registered node operators."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from chain.devnet import DevnetChain, dev_accounts, start_devnet_process
from chain.types import UNIT, EpochInfo
from keys import AccountKey, NodeKey


@dataclass
class Operator:
    """One node operator: coldkey (dev account), fresh hotkey, node key, and its chain client."""

    index: int
    coldkey: AccountKey
    hotkey: AccountKey
    node_key: NodeKey
    chain: DevnetChain
    node_id: int | None = None

    @property
    def peer_id(self) -> str:
        return self.node_key.peer_id


class ChainNet:
    """A devnet process + one subnet; operators registered before activation are Validator class."""

    def __init__(self, tmp: Path, *, block_time: float = 0.25, epoch_length: int = 20, params: dict | None = None):
        self.proc = start_devnet_process(tmp / "chain.db", block_time=block_time, epoch_length=epoch_length,
                                         params=params, log_path=tmp / "chain.log")
        self.url = self.proc.url
        self.accounts = dev_accounts(10)
        self.owner = DevnetChain(self.url, coldkey=self.accounts[0])
        self.subnet_id = self.owner.register_subnet("consensus-test", min_stake=100 * UNIT, max_stake=1000 * UNIT)
        self.owner.add_delegate_stake(self.subnet_id, 100 * UNIT)  # without it the subnet earns no node emissions
        self.operators: list[Operator] = []
        self._clients: list[DevnetChain] = [self.owner]

    def client(self) -> DevnetChain:
        c = DevnetChain(self.url)
        self._clients.append(c)
        return c

    def add_operator(self, *, register: bool = True, stake: int = 100 * UNIT) -> Operator:
        i = len(self.operators) + 1
        hot = AccountKey.generate()
        chain = DevnetChain(self.url, coldkey=self.accounts[i], hotkey=hot)
        self._clients.append(chain)
        self.owner.fund(hot.address, 10 * UNIT)
        op = Operator(i, self.accounts[i], hot, NodeKey.generate(), chain)
        if register:
            op.node_id = chain.register_subnet_node(self.subnet_id, hotkey=hot.address, peer_id=op.peer_id, stake=stake)
        self.operators.append(op)
        return op

    def activate(self) -> None:
        self.owner.activate_subnet(self.subnet_id)

    def epoch_info(self) -> EpochInfo:
        return self.owner.get_epoch_info(self.subnet_id)

    def wait_progress(self, lo: float, hi: float, *, epoch: int | None = None, timeout: float = 60.0) -> EpochInfo:
        """Block until the chain is inside [lo, hi) of `epoch` (or of any epoch)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.epoch_info()
            if (epoch is None or info.epoch == epoch) and lo <= info.progress < hi:
                return info
            if epoch is not None and info.epoch > epoch:
                raise TimeoutError(f"epoch {epoch} passed while waiting for [{lo}, {hi})")
            time.sleep(0.03)
        raise TimeoutError(f"chain never reached progress [{lo}, {hi})")

    def wait_epoch(self, epoch: int, timeout: float = 120.0) -> EpochInfo:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.epoch_info()
            if info.epoch >= epoch:
                return info
            time.sleep(0.05)
        raise TimeoutError(f"epoch {epoch} not reached")

    def close(self) -> None:
        for c in self._clients:
            try:
                c.close()
            except Exception:
                pass
        self.proc.stop()


class Node:
    """A real node: its own hivemind DHT peer (with the consensus record validator), and
    optionally a hoster serving a block range (+ its duty) and/or a validator duty.

    Start every node's DHT first (`Node(...)`), then the roles (`start_roles`): hivemind forks
    its DHT process, and forking a process that already runs hoster threads is fragile.
    """

    def __init__(self, net: ChainNet, op: Operator, initial_peers: list[str]):
        from subnet.swarm.chain_view import ChainRegistry
        from subnet.swarm.dht import start_dht, visible_maddrs
        from subnet.swarm.evidence_records import EvidencePolicy, EvidenceRecordValidator
        from subnet.swarm.record_admission import make_record_validator

        url, sid = net.url, net.subnet_id
        self.net, self.op = net, op
        self.hoster = self.hoster_duty = self.validator = None
        evidence = EvidenceRecordValidator(EvidencePolicy(sid, ChainRegistry(lambda: DevnetChain(url), sid)))
        self.dht = start_dht(op.node_key, initial_peers, check_if_identity_free=False,
                             record_validators=[make_record_validator(lambda: DevnetChain(url), sid), evidence])
        self.maddrs = visible_maddrs(self.dht)

    def start_roles(self, *, model: str | None = None, blocks: tuple[int, int] | None = None,
                    validator: bool = True, hidden_size: int = 64, num_blocks: int = 8, validator_cls=None,
                    hoster_duty_cls=None, hoster_kw: dict | None = None, **validator_kw) -> Node:
        from hoster.duty import HosterDuty
        from validator.duty import ValidatorDuty

        sid, op = self.net.subnet_id, self.op
        if blocks is not None:
            from hoster.server import Hoster

            self.hoster = Hoster(model, dht=self.dht, node_key=op.node_key, start=blocks[0], end=blocks[1],
                                 progress=False, **(hoster_kw or {})).start()
            cls = hoster_duty_cls or HosterDuty
            self.hoster_duty = cls(self.dht, op.chain, op.node_key, self.hoster, sid, hidden_size=hidden_size,
                                   num_blocks=num_blocks).start()
        if validator:
            cls = validator_cls or ValidatorDuty
            self.validator = cls(self.dht, op.chain, op.node_key, sid, hidden_size=hidden_size,
                                 num_blocks=num_blocks, **validator_kw).start()
        return self

    @property
    def peer_id(self) -> str:
        return self.op.peer_id

    def stop(self) -> None:
        import sys

        t0 = time.monotonic()
        for duty in (self.validator, self.hoster_duty):
            if duty is not None:
                duty.stop()
        if self.hoster is not None:
            self.hoster.shutdown()
        self.dht.shutdown()
        print(f"node {self.peer_id[-6:]} stopped in {time.monotonic() - t0:.1f}s", file=sys.stderr)
