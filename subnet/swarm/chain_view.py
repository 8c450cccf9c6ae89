"""The chain as the swarm sees it: the epoch position and the registered nodes, cached.

Admission checks every DHT record against the chain; reading the chain for each record
would hammer it, so `ChainRegistry` caches the epoch view for half a block and the node
list for an epoch.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from chain.base import Chain
from chain.types import SubnetNode
from subnet.logs import event

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochPosition:
    """The chain's position: epoch, block, and where that block sits in the epoch."""

    epoch: int
    block: int
    blocks_per_epoch: int
    block_in_epoch: int
    block_time: float = 1.0

    @property
    def progress(self) -> float:
        return self.block_in_epoch / self.blocks_per_epoch

    def epoch_start(self, epoch: int) -> int:
        """First block of `epoch` (epochs are contiguous runs of `blocks_per_epoch` blocks)."""
        return self.block - self.block_in_epoch + (epoch - self.epoch) * self.blocks_per_epoch

    @classmethod
    def from_epoch_info(cls, info) -> EpochPosition:
        return cls(info.epoch, info.block, info.blocks_per_epoch, info.block_in_epoch, info.block_time)


class ConsensusRegistry(Protocol):
    """What admission needs from the chain (cached by the implementation)."""

    def view(self) -> EpochPosition: ...

    def node(self, peer_id: str) -> SubnetNode | None: ...

    def cached_nodes(self) -> dict[str, SubnetNode]:
        """The node list as last read (no chain access; empty before the first read)."""
        with self._lock:
            return dict(self._nodes)

    def elected_peer(self, epoch: int) -> str | None: ...

    def randomness(self, epoch: int) -> bytes | None: ...

    def nodes(self) -> dict[str, SubnetNode]: ...


class ChainRegistry:
    """`ConsensusRegistry` over a `chain.Chain`, safe to use inside hivemind's DHT process.

    The chain client is built lazily per process from `chain_factory` (hivemind forks its DHT
    process; an HTTP connection pool must not be shared across a fork). The epoch view is
    refreshed at most every `view_ttl` seconds (default: half a block); the node list once
    per epoch, plus at most once per `miss_refresh` seconds when an unknown peer shows up
    (a node registered mid-epoch), so unregistered spammers cannot hammer the chain.
    """

    def __init__(self, chain_factory: Callable[[], Chain], subnet_id: int, *, view_ttl: float | None = None,
                 miss_refresh: float = 2.0):
        self._factory = chain_factory
        self.subnet_id = subnet_id
        self._view_ttl = view_ttl
        self._miss_refresh = miss_refresh
        self._pid: int | None = None
        self._owner_pid = os.getpid()
        self._chain: Chain | None = None
        self._lock = threading.RLock()
        self._view: EpochPosition | None = None
        self._view_at = 0.0
        self._nodes_epoch: int | None = None
        self._nodes: dict[str, SubnetNode] = {}
        self._nodes_at = 0.0
        self._elected: dict[int, str | None] = {}
        self._randomness: dict[int, bytes] = {}

    def __getstate__(self):  # picklable for spawn-started DHT processes: drop live clients
        state = self.__dict__.copy()
        state.update(_chain=None, _pid=None, _lock=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.RLock()

    @property
    def chain(self) -> Chain:
        if self._chain is None or self._pid != os.getpid():
            self._chain = self._factory()
            if self._pid is None and os.getpid() != self._owner_pid:
                probe = self._factory()  # first use in a forked process: is this really a factory?
                if probe is self._chain:
                    event(log, "chain_client_shared_across_fork", logging.WARNING,
                          hint="pass a factory that builds a new chain client to make_record_validator")
                else:
                    probe.close()
            self._pid = os.getpid()
        return self._chain

    def view(self) -> EpochPosition:
        with self._lock:
            now = time.monotonic()
            ttl = self._view_ttl if self._view_ttl is not None else (self._view.block_time / 2 if self._view else 0)
            if self._view is None or now - self._view_at >= ttl:
                self._view = EpochPosition.from_epoch_info(self.chain.get_epoch_info(self.subnet_id))
                self._view_at = now
            return self._view

    def _refresh_nodes(self, epoch: int) -> None:
        self._nodes = {n.peer_id: n for n in self.chain.get_subnet_nodes(self.subnet_id)}
        self._nodes_epoch = epoch
        self._nodes_at = time.monotonic()

    def node(self, peer_id: str) -> SubnetNode | None:
        with self._lock:
            epoch = self.view().epoch
            if self._nodes_epoch != epoch:
                self._refresh_nodes(epoch)
            found = self._nodes.get(peer_id)
            if found is None and time.monotonic() - self._nodes_at >= self._miss_refresh:
                self._refresh_nodes(epoch)
                found = self._nodes.get(peer_id)
            return found

    def nodes(self) -> dict[str, SubnetNode]:
        with self._lock:
            epoch = self.view().epoch
            if self._nodes_epoch != epoch:
                self._refresh_nodes(epoch)
            return dict(self._nodes)

    def elected_peer(self, epoch: int) -> str | None:
        with self._lock:
            if epoch in self._elected and self._elected[epoch] is not None:
                return self._elected[epoch]
            node_id = self.chain.get_elected_validator(self.subnet_id, epoch)
            peer = None
            if node_id is not None:
                by_id = {n.node_id: p for p, n in self.nodes().items()}
                peer = by_id.get(node_id)
                if peer is None:
                    self._refresh_nodes(self.view().epoch)
                    peer = {n.node_id: p for p, n in self._nodes.items()}.get(node_id)
            self._elected[epoch] = peer
            for old in [e for e in self._elected if e < epoch - 4]:
                del self._elected[old]
            return peer

    def randomness(self, epoch: int) -> bytes | None:
        with self._lock:
            if epoch not in self._randomness:
                self._randomness[epoch] = self.chain.get_epoch_randomness(self.subnet_id, epoch)
                for old in [e for e in self._randomness if e < epoch - 4]:
                    del self._randomness[old]
            return self._randomness[epoch]
