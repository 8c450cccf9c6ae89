"""`mesh-node devnet`: a whole subnet on one machine.

One command starts the devnet chain (its own process), registers a subnet and its nodes
(before activation, so they start as Validator class), activates the subnet once they all
serve, and runs: a validator node in this
process (its DHT peer is the bootstrap peer; it also serves the API and dashboard), N hoster
processes (`--hoster --validator`: initial nodes are Validator class and must attest) with
overlapping block ranges, and optional extra validator processes. Ctrl-C stops everything.
A child node that exits is logged and the rest keep running (so failover can be watched);
with `--restart` it is started again with the same keys and arguments, after a backoff and
at most `--max-restarts` times a minute. Every reputation change the chain makes is logged
with the chain's reason. With `--epochs K` it waits for K scored epochs, prints a summary,
and exits non-zero when consensus failed.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from chain.devnet import DevnetChain, dev_accounts, start_devnet_process
from chain.devnet.config import DEFAULT_BLOCK_TIME, DEFAULT_EPOCH_LENGTH
from chain.types import UNIT
from keys import AccountKey, NodeKey
from subnet.logs import event
from subnet.model.tiny_model import make_tiny_model
from subnet.node import forkserver
from subnet.node.assembly import Node, NodeOptions
from subnet.node.procs import ManagedProcess, python_module_argv, stop_all
from subnet.swarm.addresses import LOOPBACK

log = logging.getLogger("mesh_node.devnet")


def overlapping_ranges(num_blocks: int, count: int) -> list[tuple[int, int]]:
    """`count` contiguous ranges covering all blocks, neighbours overlapping when possible.

    Each range spans about 2/(count+1) of the model, so inner blocks are served twice.
    """
    if count < 1 or num_blocks < 1:
        raise ValueError("need at least one hoster and one block")
    if count == 1:
        return [(0, num_blocks)]
    span = min(num_blocks, max(1, math.ceil(2 * num_blocks / (count + 1))))
    starts = [round(i * (num_blocks - span) / (count - 1)) for i in range(count)]
    return [(s, s + span) for s in starts]


HOSTER_REBALANCE_INTERVAL = 30.0  # seconds: a devnet hoster's coverage checks (`--rebalance-interval`)
DEVNET_DELEGATE_STAKE = 100 * UNIT  # the owner backs its subnet: no delegate stake, no node emissions


def hoster_flags(blocks: tuple[int, int], rebalance_interval: float = HOSTER_REBALANCE_INTERVAL) -> list[str]:
    """A devnet hoster's flags: `blocks` is only its starting range; it moves (rebalances) when
    coverage changes, e.g. when a hoster leaves and some blocks are served by nobody."""
    return ["--hoster", "--blocks", f"{blocks[0]}:{blocks[1]}", "--rebalance-interval", f"{rebalance_interval:g}"]


@dataclass
class DevnetOptions:
    model: str | None = None
    hosters: int = 3
    validators: int = 1  # including the in-process one
    epochs: int | None = None
    block_time: float = DEFAULT_BLOCK_TIME
    epoch_length: int = DEFAULT_EPOCH_LENGTH
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    chain_port: int = 0
    workdir: str | None = None
    dtype: str = "float32"
    spot_checks: bool = False  # every validator also runs spot-check sessions (validator/spot_checks.py)
    # the hosters' --compile-mode (hoster/compile_auto.py). "off" by default here, unlike a lone hoster's
    # "auto": a devnet runs every hoster and validator on one machine, and N background compiles at once
    # would take the cores from the first epochs' probe deadlines.
    compile_mode: str = "off"
    stake: int = 100
    timeout: float | None = None
    restart: bool = False  # start a child node again when it exits
    max_restarts: int = 3  # per node per RESTART_WINDOW seconds


RESTART_WINDOW = 60.0
MAX_BACKOFF = 30.0


@dataclass
class _Member:
    name: str
    role: str
    node_key: NodeKey
    hotkey: AccountKey
    coldkey: AccountKey
    key_dir: Path
    blocks: tuple[int, int] | None = None
    node_id: int | None = None
    proc: ManagedProcess | None = None
    argv: list[str] = field(default_factory=list)
    ready: bool = False
    down: bool = False  # exited and not (yet) restarted
    restart_at: float | None = None  # monotonic time of a scheduled restart
    restarts: list[float] = field(default_factory=list)  # monotonic times of restarts


@dataclass
class EpochSummary:
    epoch: int
    outcome: str
    attestors: int
    validators: int
    proposer: int | None
    scores: dict[int, int] = field(default_factory=dict)
    rewards: dict[int, int] = field(default_factory=dict)


class Devnet:
    def __init__(self, opts: DevnetOptions):
        if opts.hosters < 1 or opts.validators < 1:
            raise ValueError("a devnet needs at least one hoster and one validator")
        self.opts = opts
        self.fork = forkserver.enabled(default=True)  # read once, before anything starts: a typo is a one-line error
        self.workdir = Path(opts.workdir or tempfile.mkdtemp(prefix="mesh-devnet-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.chain_proc = None
        self.owner = None
        self.subnet_id: int | None = None
        self.members: list[_Member] = []
        self.node = None  # the in-process validator + API node
        self.model_path: str | None = None
        self._procs: list[ManagedProcess] = []
        self._reputation_epoch: int | None = None  # reputation changes logged up to this epoch
        self._reputation_checked = 0.0

    # ------------------------------------------------------------------ setup
    def _model(self) -> str:
        if self.opts.model:
            return self.opts.model
        path = self.workdir / "model"
        if not (path / "config.json").exists():
            event(log, "creating_tiny_model", path=path)
            make_tiny_model(path, "llama", num_layers=8, hidden_size=64)
        return str(path)

    def _start_chain(self) -> None:
        self.chain_proc = start_devnet_process(self.workdir / "chain.db", port=self.opts.chain_port,
                                               block_time=self.opts.block_time, epoch_length=self.opts.epoch_length,
                                               log_path=self.workdir / "chain.log")
        self.accounts = dev_accounts(2 + self.opts.hosters + self.opts.validators)
        self.owner = DevnetChain(self.chain_proc.url, coldkey=self.accounts[0])
        event(log, "chain_started", url=self.chain_proc.url, block_time=self.opts.block_time,
              epoch_length=self.opts.epoch_length)

    def _register(self, num_layers: int) -> None:
        o = self.opts
        self.subnet_id = self.owner.register_subnet("mesh-devnet", min_stake=100 * UNIT, max_stake=1000 * UNIT,
                                                    description="local mesh-node subnet")
        # As on Hypertensor, a subnet without delegate stake earns no node emissions.
        self.owner.add_delegate_stake(self.subnet_id, DEVNET_DELEGATE_STAKE)
        event(log, "delegate_staked", subnet_id=self.subnet_id, amount=DEVNET_DELEGATE_STAKE)
        ranges = overlapping_ranges(num_layers, o.hosters)
        roles = [("validator", None)] + [("hoster", r) for r in ranges] + [("validator", None)] * (o.validators - 1)
        for i, (role, blocks) in enumerate(roles):
            key_dir = self.workdir / "nodes" / f"{role}-{i}"
            key_dir.mkdir(parents=True, exist_ok=True)
            m = _Member(f"{role}-{i}", role, NodeKey.generate(), AccountKey.generate(), self.accounts[1 + i],
                        key_dir, blocks)
            m.node_key.save(key_dir / "node.key", force=True)
            m.hotkey.save(key_dir / "hotkey.json", force=True)
            self.owner.fund(m.hotkey.address, 10 * UNIT)  # hotkeys pay the fees of proposals/attestations
            with DevnetChain(self.chain_proc.url, coldkey=m.coldkey) as coldkey_client:
                m.node_id = coldkey_client.register_subnet_node(self.subnet_id, hotkey=m.hotkey.address,
                                                                peer_id=m.node_key.peer_id, stake=o.stake * UNIT)
            self.members.append(m)
            event(log, "node_registered", name=m.name, node_id=m.node_id, peer_id=m.node_key.peer_id,
                  blocks=f"{blocks[0]}:{blocks[1]}" if blocks else "-")

    def _activate(self) -> None:
        """Activate once every node serves: elections start then, and an elected node that is
        still loading its model would miss its proposal and lose reputation for it."""
        self.owner.activate_subnet(self.subnet_id)
        event(log, "subnet_activated", subnet_id=self.subnet_id)

    def _node_argv(self, m: _Member, initial_peers: list[str]) -> list[str]:
        argv = python_module_argv(
            "subnet.node.cli", "--validator", "--model", self.model_path, "--chain", self.chain_proc.url,
            "--subnet-id", str(self.subnet_id), "--node-key", str(m.key_dir / "node.key"),
            "--account-key", str(m.key_dir / "hotkey.json"), "--dtype", self.opts.dtype,
            "--host-maddrs", *LOOPBACK, "--initial-peers", *initial_peers,
        )
        if m.role == "hoster":
            argv[3:3] = [*hoster_flags(m.blocks), "--compile-mode", self.opts.compile_mode]
        if self.opts.spot_checks:
            argv.append("--spot-checks")
        return argv

    def _start_local_node(self) -> None:
        m = self.members[0]
        self.node = Node(NodeOptions(
            validator=True, api=False, model=self.model_path, chain=self.chain_proc.url, subnet_id=self.subnet_id,
            node_key=str(m.key_dir / "node.key"), account_key=str(m.key_dir / "hotkey.json"),
            api_host=self.opts.api_host, api_port=self.opts.api_port, dtype=self.opts.dtype,
            host_maddrs=list(LOOPBACK),  # one machine: the swarm stays on loopback
            spot_checks=self.opts.spot_checks,
        ))
        self.node.start()  # its DHT peer is the bootstrap; the API starts once hosters serve

    def start(self) -> Devnet:
        self.model_path = self._model()
        from transformers import AutoConfig

        num_layers = int(AutoConfig.from_pretrained(self.model_path).num_hidden_layers)
        self._start_chain()
        self._register(num_layers)
        self._start_local_node()
        peers = self.node.maddrs
        for m in self.members[1:]:
            m.argv = self._node_argv(m, peers)
            self._spawn(m)
        for m in self.members[1:]:
            m.proc.wait_ready(timeout=180)
            m.ready = True
            event(log, "node_started", name=m.name, pid=m.proc.proc.pid)
        self._activate()
        self._reputation_epoch = self.owner.get_epoch_info(self.subnet_id).epoch - 1
        self.node.start_api()
        return self

    def urls(self) -> dict[str, str]:
        api = self.node.api_url if self.node else None
        return {
            "chain": self.chain_proc.url if self.chain_proc else "",
            "api": f"{api}/v1" if api else "",
            "dashboard": f"{api}/" if api else "",
            "bootstrap": self.node.maddrs[0] if self.node else "",
            "workdir": str(self.workdir),
        }

    # ------------------------------------------------------------------ epochs
    def epoch_summary(self, epoch: int) -> EpochSummary | None:
        result = self.owner.get_epoch_result(self.subnet_id, epoch)
        if result is None:
            return None
        sub = self.owner.get_consensus_submission(self.subnet_id, epoch)
        rewards: dict[int, int] = {}
        for r in result.get("rewards", ()):
            rewards[int(r["node_id"])] = rewards.get(int(r["node_id"]), 0) + int(r["amount"])
        return EpochSummary(
            epoch=epoch, outcome=str(result["outcome"]), attestors=int(result["attestors"]),
            validators=int(result["validators"]), proposer=sub.validator_node_id if sub else None,
            scores={e.node_id: e.score for e in sub.data} if sub else {}, rewards=rewards,
        )

    def run_epochs(self, count: int, stop: threading.Event) -> list[EpochSummary]:
        """Wait for `count` finalised epochs that carry scores; the first epoch after start has none."""
        first = self.owner.get_epoch_info(self.subnet_id).epoch + 2
        epoch_seconds = self.opts.block_time * self.opts.epoch_length
        deadline = time.monotonic() + (self.opts.timeout or epoch_seconds * (count + 4) * 2 + 60)
        summaries: list[EpochSummary] = []
        for e in range(first, first + count):
            while not stop.is_set():
                self.supervise()
                self.log_reputation_changes()
                s = self.epoch_summary(e)
                if s is not None:
                    summaries.append(s)
                    event(log, "epoch_finalised", epoch=e, outcome=s.outcome,
                          attested=f"{s.attestors}/{s.validators}", proposer=s.proposer)
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"epoch {e} was not finalised in time")
                stop.wait(0.25)
        return summaries

    # ------------------------------------------------------------------ supervision
    def _spawn(self, m: _Member) -> None:
        # forked from a template that imported torch & co. once (measured: 3 hosters + validator, 34 -> 12 s of CPU)
        m.proc = ManagedProcess(m.name, m.argv, log_path=self.workdir / f"{m.name}.log",
                                fork=self.fork)
        self._procs.append(m.proc)
        m.ready = False

    def supervise(self, now: float | None = None) -> None:
        """One pass over the child nodes (the main loop calls it twice a second): log exits,
        reap what an exited node left behind, and with `restart` start it again after a backoff
        (1 s, 2 s, 4 s ... up to MAX_BACKOFF), at most `max_restarts` per RESTART_WINDOW."""
        now = time.monotonic() if now is None else now
        for m in self.members[1:]:
            if m.proc is None or (m.down and m.restart_at is None):
                continue
            if m.restart_at is not None:
                if now >= m.restart_at:
                    m.restart_at, m.down = None, False
                    m.restarts.append(now)
                    self._spawn(m)
                    event(log, "node_restarted", name=m.name, pid=m.proc.proc.pid, attempt=len(m.restarts),
                          log=m.proc.log_path)
                continue
            if m.proc.alive:
                if not m.ready and m.proc.ready_line:
                    m.ready = True
                    event(log, "node_ready", name=m.name, pid=m.proc.proc.pid)
                continue
            self._on_exit(m, now)

    def _on_exit(self, m: _Member, now: float) -> None:
        old = m.proc
        code = old.proc.returncode
        old.kill()  # its DHT process and p2p daemon must not stay online under the node's identity
        if old in self._procs:
            self._procs.remove(old)
        m.down = True
        event(log, "node_exited", level=logging.WARNING, name=m.name, node_id=m.node_id, code=code,
              log=old.log_path)
        if not self.opts.restart:
            event(log, "node_not_restarted", name=m.name, hint="run the devnet with --restart to restart nodes")
            return
        recent = [t for t in m.restarts if now - t < RESTART_WINDOW]
        if len(recent) >= self.opts.max_restarts:
            event(log, "node_restart_limit", level=logging.ERROR, name=m.name,
                  restarts=f"{len(recent)} in {RESTART_WINDOW:g}s", hint="left stopped")
            return
        delay = min(MAX_BACKOFF, 2.0 ** len(recent))
        m.restart_at = now + delay
        event(log, "node_restart_scheduled", name=m.name, in_seconds=f"{delay:g}")

    def log_reputation_changes(self, min_interval: float = 1.0) -> None:
        """Log each reputation change of settled epochs once, with the chain's reason."""
        now = time.monotonic()
        if self._reputation_epoch is None or now - self._reputation_checked < min_interval:
            return
        self._reputation_checked = now
        names = {m.node_id: m.name for m in self.members}
        try:
            current = self.owner.get_epoch_info(self.subnet_id).epoch
            for e in range(self._reputation_epoch + 1, current):
                result = self.owner.get_epoch_result(self.subnet_id, e)
                if result is None:
                    if e >= current - 1:
                        break  # not settled yet
                    self._reputation_epoch = e
                    continue
                for c in result.get("reputation_changes", ()):
                    drop = float(c["after"]) < float(c["before"])
                    event(log, "reputation_changed", level=logging.WARNING if drop else logging.INFO, epoch=e,
                          node_id=c["node_id"], name=names.get(c["node_id"], "?"), before=f"{float(c['before']):.2f}",
                          after=f"{float(c['after']):.2f}", reason=c.get("reason", "unknown"),
                          detail=c.get("detail", ""))
                self._reputation_epoch = e
        except Exception as e:  # the chain being briefly unreachable must not stop the devnet
            log.debug("reputation changes unavailable: %s", e)

    def node_table(self) -> list[dict]:
        rows = []
        by_id = {m.node_id: m for m in self.members}
        for n in self.owner.get_subnet_nodes(self.subnet_id):
            m = by_id.get(n.node_id)
            rows.append({
                "node_id": n.node_id, "name": m.name if m else "?", "class": n.node_class.name,
                "stake": n.stake, "reputation": n.reputation,
                "blocks": f"{m.blocks[0]}:{m.blocks[1]}" if m and m.blocks else "-",
            })
        return rows

    # ------------------------------------------------------------------ stop
    def stop(self) -> None:
        stop_all(self._procs)
        if self.node is not None:
            self.node.stop()
        if self.owner is not None:
            self.owner.close()
        if self.chain_proc is not None:
            self.chain_proc.stop()
        event(log, "devnet_stopped", workdir=self.workdir)


def format_summary(summaries: list[EpochSummary], nodes: list[dict]) -> str:
    lines = ["", "epoch  outcome    attested  proposer  scores (node:score)"]
    for s in summaries:
        scores = " ".join(f"{n}:{v / 1e18:.3f}" for n, v in sorted(s.scores.items()))
        lines.append(f"{s.epoch:<6} {s.outcome:<10} {s.attestors}/{s.validators:<7} {s.proposer!s:<9} {scores}")
    lines += ["", "node  name          class       blocks  stake (TENSOR)      rewards in these epochs"]
    for r in nodes:
        earned = sum(s.rewards.get(r["node_id"], 0) for s in summaries) / UNIT
        lines.append(f"{r['node_id']:<5} {r['name']:<13} {r['class']:<11} {r['blocks']:<7} "
                     f"{r['stake'] / UNIT:<19.6f} {earned:+.6f}")
    return "\n".join(lines)


def run_devnet(opts: DevnetOptions) -> int:
    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    devnet = Devnet(opts)
    try:
        devnet.start()
        urls = devnet.urls()
        print("mesh-node devnet is up:", flush=True)
        for k in ("api", "dashboard", "chain", "bootstrap", "workdir"):
            print(f"  {k:<10} {urls[k]}", flush=True)
        print(f"READY {json.dumps(urls)}", flush=True)
        if opts.epochs is None:
            print("Press Ctrl-C to stop.", flush=True)
            while not stop.wait(0.5):
                devnet.supervise()
                devnet.log_reputation_changes()
            return 0
        summaries = devnet.run_epochs(opts.epochs, stop)
        if stop.is_set():
            return 130
        print(format_summary(summaries, devnet.node_table()), flush=True)
        failed = [s.epoch for s in summaries if s.outcome != "accepted" or s.attestors < s.validators]
        if failed:
            print(f"consensus FAILED in epochs {failed}", file=sys.stderr, flush=True)
            return 1
        print(f"consensus OK: {len(summaries)} epoch(s) proposed, attested by all validators, rewards paid", flush=True)
        return 0
    finally:
        devnet.stop()
