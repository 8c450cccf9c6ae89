"""Start a subnet across namespaces of a `NetLab`: a devnet chain, nodes registered with their
namespace's multiaddr, started with no --initial-peers (they find each other from the chain)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from netlab import NetLab

from chain.devnet import DevnetChain, dev_accounts
from chain.types import UNIT
from keys import AccountKey, NodeKey
from subnet.node.procs import ManagedProcess, stop_all

P2P_PORT = 31337
CHAIN_PORT = 9944


@dataclass
class Member:
    label: str
    node_key: NodeKey
    hotkey: AccountKey
    key_dir: Path
    flags: list[str]
    ip: str = ""  # the address others dial (registered on chain, announced)
    proc: ManagedProcess | None = None


@dataclass
class LabSubnet:
    lab: NetLab
    workdir: Path
    model: str
    block_time: float = 0.3
    epoch_length: int = 20
    members: list[Member] = field(default_factory=list)
    procs: list[ManagedProcess] = field(default_factory=list)
    url: str = ""
    subnet_id: int = 0
    owner: DevnetChain | None = None

    def start_chain(self) -> None:
        host = self.lab.add("chain")
        argv = [sys.executable, "-m", "chain.devnet.server", "--db", str(self.workdir / "chain.db"), "--host",
                "0.0.0.0", "--port", str(CHAIN_PORT), "--block-time", str(self.block_time), "--epoch-length",
                str(self.epoch_length), "--quiet"]
        self.procs.append(ManagedProcess("chain", self.lab.argv("chain", argv), log_path=self.workdir / "chain.log"))
        self.url = f"http://{host.ip}:{CHAIN_PORT}"
        self.accounts = dev_accounts(10)
        self.owner = DevnetChain(self.url, coldkey=self.accounts[0])
        wait_for(lambda: _answers(self.owner), 60, "the devnet chain to answer")
        self.subnet_id = self.owner.register_subnet("mesh-netns", min_stake=100 * UNIT, max_stake=1000 * UNIT)

    def maddr(self, m: Member) -> str:
        return f"/ip4/{m.ip}/tcp/{P2P_PORT}/p2p/{m.node_key.peer_id}"

    def add_node(self, label: str, flags: list[str], *, register: bool = True, public: bool = False,
                 registered_maddr=None) -> Member:
        """Registers (with the namespace's multiaddr, or `registered_maddr(member)`) a node that will run
        `flags` in its own namespace; `public` gives it a public-looking address (NetLab.add_public_address)."""
        host = self.lab.add(label)
        key_dir = self.workdir / label
        key_dir.mkdir(parents=True, exist_ok=True)
        ip = self.lab.add_public_address(label) if public else host.ip
        m = Member(label, NodeKey.generate(), AccountKey.generate(), key_dir, list(flags), ip)
        m.node_key.save(key_dir / "node.key", force=True)
        m.hotkey.save(key_dir / "hotkey.json", force=True)
        if register:
            self.owner.fund(m.hotkey.address, 10 * UNIT)
            maddr = registered_maddr(m) if registered_maddr else self.maddr(m)
            with DevnetChain(self.url, coldkey=self.accounts[1 + len(self.members)]) as cold:
                cold.register_subnet_node(self.subnet_id, hotkey=m.hotkey.address, peer_id=m.node_key.peer_id,
                                          stake=100 * UNIT, multiaddr=maddr)
        self.members.append(m)
        return m

    def spawn(self, m: Member, *, announce: bool = True) -> ManagedProcess:
        ip = m.ip
        argv = [sys.executable, "-m", "subnet.node.cli", *m.flags, "--model", self.model, "--chain", self.url,
                "--subnet-id", str(self.subnet_id), "--node-key", str(m.key_dir / "node.key"),
                "--account-key", str(m.key_dir / "hotkey.json"), "--host-maddrs", f"/ip4/0.0.0.0/tcp/{P2P_PORT}"]
        if announce:
            argv += ["--announce-maddrs", f"/ip4/{ip}/tcp/{P2P_PORT}"]
        m.proc = ManagedProcess(m.label, self.lab.argv(m.label, argv), log_path=self.workdir / f"{m.label}.log",
                                env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        self.procs.append(m.proc)
        return m.proc

    def epoch_result(self, epoch: int) -> dict | None:
        return self.owner.get_epoch_result(self.subnet_id, epoch)

    def logs_tail(self, lines: int = 15) -> str:
        out = []
        for p in self.procs:
            if p.log_path and p.log_path.exists():
                tail = p.log_path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {p.name}\n" + "\n".join(tail))
        return "\n".join(out)

    def stop(self) -> None:
        stop_all(self.procs, timeout=15)
        if self.owner is not None:
            self.owner.close()


def _answers(chain: DevnetChain) -> bool:
    try:
        chain.get_block()
        return True
    except Exception:
        return False


def wait_for(cond, timeout: float, what: str, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
