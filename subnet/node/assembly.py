"""Assemble one node from its roles: `mesh-node --hoster [--validator] [--api]`.

A node owns one Ed25519 key (its peer id), one DHT peer (with the consensus record
validator installed when a chain is configured), and runs whichever roles were asked
for on top of them. All roles put their Prometheus metrics in one registry per node, served
by the API's `/metrics` (with --api) and on --metrics-port (if given). Shutdown runs in
reverse order: the API stops taking requests, the duties stop, the hoster withdraws its
announcement and ends sessions, the DHT goes last.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from chain import connect
from hoster.duty import HosterDuty
from hoster.metrics import HosterMetrics, MetricsServer
from keys import AccountKey, NodeKey
from subnet.logs import event
from subnet.model.blocks import model_uid
from subnet.node.errors import NodeConfigError, UserError
from subnet.node.node_options import NodeOptions, check_node_options
from subnet.swarm.addresses import NetworkOptions
from subnet.swarm.announcements import AnnouncementValidator
from subnet.swarm.chain_view import ChainRegistry
from subnet.swarm.dht import dial_order, start_dht, visible_maddrs
from subnet.swarm.discovery import peers_from_chain
from subnet.swarm.evidence_records import EvidencePolicy, EvidenceRecordValidator
from subnet.swarm.key_caps import KeyCapValidator
from subnet.swarm.record_admission import make_record_validator
from validator.class_reference import reference_publisher
from validator.duty import ValidatorDuty
from validator.evidence import EvidenceChecker
from validator.journal import ValidatorJournal, journal_path
from validator.metrics import ValidatorMetrics
from validator.reference import holds_weights
from validator.spot_checks import SpotCheckDuty
from validator.weights import ValidatorWeights

log = logging.getLogger("mesh_node.node")
JOIN_ATTEMPTS = 3  # starts with peers from the chain before starting as the first peer
JOIN_RETRY_PAUSE = 2.0  # seconds between them


class Node:
    """One running node; `start()` returns once every role serves, `stop()` is idempotent."""

    def __init__(self, opts: NodeOptions, network: NetworkOptions | None = None):
        """`network`: what `check_node_options(opts)` returned, when the caller already ran the checks
        (the CLI runs them before importing this module); otherwise they run here."""
        self.opts = opts
        self.network: NetworkOptions = network if network is not None else check_node_options(opts)
        self.node_key: NodeKey | None = None
        self.chain: Any = None
        self.dht: Any = None
        self.hoster: Any = None
        self.hoster_duty: Any = None
        self.validator_duty: Any = None
        self.spot_duty: Any = None
        self._spot_client: Any = None
        self.api_server: Any = None
        self.api_url: str | None = None
        self._swarm_backend: Any = None
        self.metrics_registry = CollectorRegistry(auto_describe=True)  # every role's metrics, one registry
        self.metrics_server: MetricsServer | None = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    # ------------------------------------------------------------------ start
    def start(self) -> Node:
        o = self.opts
        self.node_key = NodeKey.load(o.node_key) if o.node_key else NodeKey.generate()
        if not o.node_key:
            event(log, "ephemeral_node_key", logging.WARNING, peer_id=self.node_key.peer_id,
                  hint="pass --node-key to keep this identity across restarts")
        try:
            self._start_chain()
            self._start_dht()
            if o.hoster:
                self._start_hoster()
            if self.chain is not None:
                self._start_duties()
            if o.api:
                self.start_api()
            if o.metrics_port is not None:
                self.metrics_server = MetricsServer(self.metrics_registry, o.metrics_host, o.metrics_port)
        except BaseException:
            self.stop()
            raise
        event(log, "node_ready", peer_id=self.node_key.peer_id, roles=self.roles, maddr=self.maddrs[0],
              api=self.api_url or "-")
        return self

    @property
    def roles(self) -> str:
        o = self.opts
        return ",".join(r for r, on in (("hoster", o.hoster), ("validator", o.validator), ("api", o.api)) if on)

    @property
    def maddrs(self) -> list[str]:
        return dial_order(visible_maddrs(self.dht))

    def _start_chain(self) -> None:
        o = self.opts
        if not o.chain:
            event(log, "no_chain", logging.WARNING, hint="serving without a chain: no consensus duties")
            return
        hotkey = AccountKey.load(o.account_key) if o.account_key else None
        self.chain = connect(o.chain, hotkey=hotkey)
        me = self.chain.get_node_by_peer_id(o.subnet_id, self.node_key.peer_id)
        if me is None:
            event(log, "not_registered", logging.WARNING, subnet_id=o.subnet_id, peer_id=self.node_key.peer_id,
                  hint="register with `mesh-node register`; records from unregistered peers are rejected")
        else:
            event(log, "chain_node", node_id=me.node_id, node_class=me.node_class.name, stake=me.stake)

    def _start_dht(self) -> None:
        # nobody may overwrite a hoster's announcement subkey; with a chain, only registered nodes announce
        models = [model_uid(self.opts.model, self.opts.model_name)] if self.opts.model else []
        registry = None
        if self.chain is not None:
            url = self.opts.chain
            registry = ChainRegistry(lambda: connect(url), self.opts.subnet_id)
        validators: list = [AnnouncementValidator(model_uids=models, registry=registry)]
        if self.chain is not None:
            # hivemind forks the DHT process: the record validator must build its own read-only
            # chain client there rather than share this process's connection.
            consensus = make_record_validator(lambda: connect(url), self.opts.subnet_id)
            evidence = EvidencePolicy(self.opts.subnet_id, registry)
            # only the project's keys, within their caps (subnet/swarm/key_caps.py); evidence has its own
            validators += [consensus, EvidenceRecordValidator(evidence),
                           KeyCapValidator(consensus.policy,
                                           extra_families=[lambda r: evidence.known_key(r.key) is not None])]
        peers = self._initial_peers()
        if self.network.use_auto_relay and not self.network.relay_peers:
            self.network.relay_peers = list(peers)  # behind NAT: any public peer we know may relay for us
        for attempt in range(1, JOIN_ATTEMPTS + 1):
            try:
                self.dht = start_dht(self.node_key, peers, record_validators=validators, **self.network.dht_kwargs())
                return
            except Exception as e:  # p2pd exits when it reaches none of its bootstrap peers
                if self.opts.initial_peers or not peers or "bootstrap" not in str(e):
                    raise
                if attempt == JOIN_ATTEMPTS:
                    break
                # A peer that is up may still miss one dial on a loaded machine; starting alone would
                # leave this node on a DHT island for good (a NAT'd hoster once announced to nobody).
                event(log, "chain_peers_retry", logging.INFO, attempt=attempt, count=len(peers))
                time.sleep(JOIN_RETRY_PAUSE)
        # peers only from the chain, none reachable (stale addresses, or we are the first one up)
        if self.network.use_auto_relay:  # nobody can dial a node behind NAT: alone, it would serve no one
            raise UserError(f"behind NAT (use_auto_relay) and none of the {len(peers)} peers the chain lists "
                            f"answered in {JOIN_ATTEMPTS} attempts: a node nobody can dial cannot start as the "
                            "first peer; start it again once a public node of the subnet is up")
        event(log, "chain_peers_unreachable", logging.WARNING, count=len(peers),
              hint="starting as the first peer; others join through this node")
        self.dht = start_dht(self.node_key, [], record_validators=validators, **self.network.dht_kwargs())

    def _initial_peers(self) -> list[str]:
        """--initial-peers, plus (with a chain) the subnet's bootnodes and registered nodes' multiaddrs."""
        peers = list(self.opts.initial_peers)
        if self.chain is not None:
            for maddr in peers_from_chain(self.chain, self.opts.subnet_id, exclude_peer_ids=[self.node_key.peer_id]):
                if maddr not in peers:
                    peers.append(maddr)
        if not peers:
            event(log, "no_initial_peers", logging.WARNING,
                  hint="first node of the swarm: others join through this node's address")
        return peers

    def _start_hoster(self) -> None:
        from hoster.server import Hoster  # deferred: only hosters load model code (~0.8 s)

        hoster = Hoster.from_options(self.opts, dht=self.dht, node_key=self.node_key, network=self.network)
        HosterMetrics(self.metrics_registry).attach(hoster)
        from hoster.adapters import AdapterError  # deferred: as Hoster above

        try:
            self.hoster = hoster.start()
        except AdapterError as e:  # shapes that do not fit the blocks: one line, nothing announced
            raise NodeConfigError(str(e)) from None

    def _model_shape(self) -> tuple[int, int]:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(self.opts.model)
        return int(cfg.hidden_size), int(cfg.num_hidden_layers)

    def _start_duties(self) -> None:
        o = self.opts
        hidden, layers = self._model_shape()
        if self.hoster is not None:
            self.hoster_duty = HosterDuty(self.dht, self.chain, self.node_key, self.hoster, o.subnet_id,
                                          hidden_size=hidden, num_blocks=layers).start()
        if o.validator:
            reference = None
            self._weights = ValidatorWeights(o.model, layers)  # one copy for reference, evidence and spot checks
            if o.reference and holds_weights(o.model):
                reference = reference_publisher(self.dht, self.node_key, o.subnet_id, o.model, layers, o.dtype,
                                                o.reference_precisions, weights=self._weights)
            url = o.chain
            evidence = EvidenceChecker(self.dht, EvidencePolicy(o.subnet_id, ChainRegistry(lambda: connect(url),
                                                                                           o.subnet_id)),
                                       model_uid(o.model, o.model_name), self._weights.reference())
            self.validator_duty = ValidatorDuty(self.dht, self.chain, self.node_key, o.subnet_id,
                                                hidden_size=hidden, num_blocks=layers, reference=reference,
                                                evidence=evidence, journal=self._journal()).start()
            ValidatorMetrics(self.validator_duty, self.metrics_registry)
            if o.spot_checks:
                self._start_spot_checks(layers)

    def _start_spot_checks(self, layers: int) -> None:
        from subnet.client.spot_session import SpotCheckClient  # deferred: only spot-checking validators
        from subnet.model.blocks import load_config  # deferred: as above

        o, url = self.opts, self.opts.chain
        uid = model_uid(o.model, o.model_name)
        self._spot_client = SpotCheckClient(self.maddrs, uid)
        policy = EvidencePolicy(o.subnet_id, ChainRegistry(lambda: connect(url), o.subnet_id))
        self.spot_duty = SpotCheckDuty(self.dht, self.node_key, policy, uid, load_config(o.model).vocab_size,
                                       self._spot_client.run, self._weights.reference(),
                                       self._weights.embed()).start()

    def _journal(self) -> ValidatorJournal | None:
        """The validator's restart journal under the data dir (none for a node without a key file)."""
        o = self.opts
        data_dir = o.data_dir or (str(Path(o.node_key).expanduser().parent) if o.node_key else None)
        if data_dir is None or o.subnet_id is None:
            return None
        return ValidatorJournal(journal_path(data_dir, o.subnet_id), peer_id=self.node_key.peer_id,
                                subnet_id=o.subnet_id)

    def reports(self) -> dict[int, dict]:
        """Per-epoch consensus reports of this node (validator view if any, else hoster view)."""
        duty = self.validator_duty or self.hoster_duty
        return dict(duty.reports) if duty is not None else {}

    def start_api(self) -> str:
        """Serve the API (also callable after `start()`, once the swarm has hosters)."""
        from subnet.api.app import create_app  # deferred: only --api nodes need fastapi/uvicorn (~0.3 s)
        from subnet.api.server import BackgroundServer  # deferred: as above
        from subnet.api.swarm_backend import SwarmBackend  # deferred: as above

        o = self.opts
        if not o.model:
            raise NodeConfigError("--api needs --model (the client parts are loaded locally)")
        # with a chain, the API routes only to registered hosters
        registry = ChainRegistry(lambda: connect(o.chain), o.subnet_id) if self.chain is not None else None
        self._swarm_backend = SwarmBackend.from_pretrained(o.model, self.maddrs, model_name=o.model_name,
                                                           registry=registry)
        view = None
        if self.chain is not None:
            from subnet.api.subnet_view import ChainSubnetView  # deferred: as above

            view = ChainSubnetView(self.chain, o.subnet_id, dht=self.dht, models=[self._swarm_backend_uid()],
                                   reports=self.reports)
        app = create_app(self._swarm_backend, view, api_keys=o.api_keys, metrics_registry=self.metrics_registry)
        self.api_server = BackgroundServer(app, o.api_host, o.api_port)
        self.api_url = self.api_server.start()
        self.opts.api = True
        return self.api_url

    def _swarm_backend_uid(self) -> str:
        return model_uid(self.opts.model, self.opts.model_name)

    # ------------------------------------------------------------------ stop
    def stop(self) -> None:
        with self._stop_lock:
            if self._stopped.is_set():
                return
            self._stopped.set()
        for name, fn in (
            ("metrics", lambda: self.metrics_server and self.metrics_server.stop()),
            ("api", lambda: self.api_server and self.api_server.stop()),
            ("swarm_client", lambda: self._swarm_backend and self._swarm_backend.close()),
            ("validator_duty", lambda: self.validator_duty and self.validator_duty.stop()),
            ("spot_checks", lambda: (self.spot_duty and self.spot_duty.stop(),
                                     self._spot_client and self._spot_client.close())),
            ("hoster_duty", lambda: self.hoster_duty and self.hoster_duty.stop()),
            ("hoster", lambda: self.hoster and self.hoster.shutdown()),
            ("dht", lambda: self.dht and self.dht.shutdown()),
            ("chain", lambda: self.chain and self.chain.close()),
        ):
            try:
                fn()
            except Exception as e:  # keep shutting down the rest
                event(log, "stop_failed", logging.WARNING, part=name, error=repr(e))
        event(log, "node_stopped")

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)


def run_node(opts: NodeOptions, network: NetworkOptions) -> int:
    """CLI entry, with the options `check_node_options` accepted and what it returned: start the node,
    print `READY <peer_id> <maddr> [api_url]`, run until SIGINT/SIGTERM."""
    node = Node(opts, network)
    stop = threading.Event()

    def on_signal(signum, _frame):
        event(log, "signal", name=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    node.start()
    gc.freeze()  # the start-up heap is never garbage: out of every collection, including the one at exit
    print(f"READY {node.node_key.peer_id} {node.maddrs[0]}" + (f" {node.api_url}" if node.api_url else ""),
          flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        node.stop()
    return 0
