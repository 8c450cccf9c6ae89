"""The hoster: load a span of blocks, serve it over hivemind P2P, announce it in the DHT.

Threads: the caller's thread (start/shutdown), one asyncio loop thread for the P2P
handlers, the backend's compute thread, the announcer thread, and optionally a
rebalance thread. `Hoster.run_span` is the probe duty's entry into the exact serving
forward path. Options (and their defaults) live in `hoster.options.HosterOptions`; a
hoster with a rebalance interval may leave its starting range, pinned by --blocks or not.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import signal
import threading
import time
from collections.abc import Callable, Sequence

import hivemind
import torch

from hoster.adapters import check_sources, load_span_adapters, served
from hoster.announce import Announcer
from hoster.backend import Backend
from hoster.cache import CacheBudget
from hoster.compile_auto import (
    Choices,
    auto_compiles,
    buckets_enabled,
    compile_mode as resolve_compile_mode,
    shape_key,
    use_persistent_cache,
)
from hoster.compiled import kernel_for_compile
from hoster.decode_threads import remembered
from hoster.options import (
    DEFAULT_CACHE_TOKENS,
    HosterOptions,
    parse_blocks as parse_blocks,  # re-exported: older imports name hoster.server
)
from hoster.receipts import ReceiptBook
from hoster.selection import Span, choose_blocks, should_move
from hoster.servicer import NAMESPACE, BlockServicer
from keys.node_key import NodeKey
from subnet.logs import event
from subnet.model.adapters import parse_adapter_list
from subnet.model.blocks import dtype_name, load_blocks, load_config, model_uid, parse_dtype
from subnet.swarm.addresses import NetworkOptions
from subnet.swarm.announcements import Announcement, AnnouncementValidator, read_announcements
from subnet.swarm.dht import dial_order, start_dht, visible_maddrs
from subnet.version import version

log = logging.getLogger(__name__)

_D = HosterOptions()  # the keyword defaults below are HosterOptions' (one home)


def start_dht_compat(key: NodeKey | None = None, initial_peers: Sequence[str] = (), **kwargs) -> hivemind.DHT:
    """`subnet.swarm.dht.start_dht`, skipping hivemind's identity-collision check: it parses the
    identity file as RSA and fails on our Ed25519 keys whenever initial peers are given."""
    if "check_if_identity_free" not in inspect.signature(start_dht).parameters:
        kwargs.setdefault("check_if_identity_free", False)
    return start_dht(key, initial_peers, **kwargs)


async def own_p2p_replica(dht: hivemind.DHT):
    """A P2P replica of the DHT's daemon bound to the running loop.

    `DHT.replicate_p2p()` caches ONE replica per process, bound to the loop that created it;
    a node whose client/duties also use the DHT from other loops must not share it.
    """
    from hivemind.p2p import P2P

    maddr = await asyncio.get_running_loop().run_in_executor(
        None, dht.run_coroutine, hivemind.DHT._get_p2p_daemon_listen_maddr)
    return await P2P.replicate(maddr)


class Hoster:
    """Serve blocks [start, end) of one model; `start()` then `shutdown()` (idempotent)."""

    def __init__(self, model_path: str, *, dht: hivemind.DHT | None = None, node_key: NodeKey | None = None,
                 initial_peers: Sequence[str] = (), host_maddrs: Sequence[str] | None = None,
                 start: int | None = None, end: int | None = None, num_blocks: int | None = None,
                 dtype: str | torch.dtype = _D.dtype, device: str = _D.device, cache_tokens: int | None = None,
                 cache_bytes: int | None = None, model_name: str | None = None,
                 session_timeout: float = _D.session_timeout, announce_period: float = _D.announce_period,
                 announce_ttl: float = _D.announce_ttl, gather_window: float = _D.gather_window,
                 rebalance_interval: float | None = _D.rebalance_interval, max_length: int = 8192,
                 throughput: float | None = _D.throughput, progress: bool = _D.progress,
                 linear_kernel: str | None = _D.linear_kernel, compile_decode: bool = _D.compile_decode,
                 compile_mode: str | None = _D.compile_mode,
                 network: NetworkOptions | None = None, quant: str = _D.quant,
                 adapters: str | Sequence[str] | None = _D.adapters):
        if dht is not None and node_key is None:
            raise ValueError("a hoster given a DHT also needs that DHT's node_key to sign announcements")
        self.model_path = str(model_path)
        self.model_uid = model_uid(model_path, model_name)
        self.node_key = node_key or NodeKey.generate()
        self._dht, self._own_dht = dht, dht is None
        self.initial_peers, self.host_maddrs = list(initial_peers), host_maddrs
        # addresses/relays of an own DHT (subnet.swarm.addresses); `relayed` goes in the announcement
        self.network = network or NetworkOptions(host_maddrs=list(host_maddrs) if host_maddrs else None)
        self._network_given = network is not None
        self.requested = (start, end)
        self.num_blocks_wanted = num_blocks
        self.dtype, self.device = parse_dtype(dtype), device
        self.quant = quant  # subnet.model.quant: weight-only quantization of the blocks
        self.adapter_sources = parse_adapter_list(adapters)  # LoRA adapters (hoster.adapters); ValueError: one line
        self.model_name = model_name
        self.cache_tokens, self.cache_bytes = cache_tokens, cache_bytes
        self.session_timeout, self.gather_window, self.max_length = session_timeout, gather_window, max_length
        self.announce_period, self.announce_ttl = announce_period, announce_ttl
        self.rebalance_interval = rebalance_interval
        self.progress = progress
        self.linear_kernel = linear_kernel  # subnet.model.kernels; None = MESH_LINEAR_KERNEL or onednn
        # hoster.compile_auto: on (compiled before announcing), auto (in the background, if faster), off
        self.compile_mode = resolve_compile_mode(compile_mode, compile_decode)
        buckets_enabled()  # a bad MESH_NODE_COMPILE_BUCKETS fails the start, not the background compile
        if self.compile_mode == "on" and self.adapter_sources:
            raise ValueError("--compile does not support --adapters (adapter rows run the eager path)")
        if self.compile_mode == "on":
            self.linear_kernel = kernel_for_compile(linear_kernel)  # ValueError on a conflicting choice
        self.state = "joining"
        self.servicer_hooks: list[Callable[[BlockServicer], None]] = []  # run on the servicer before it serves
        self.fixed_throughput = throughput  # operator/test override of the start-up measurement
        self.throughput = 0.0
        self._throughput_path = "eager"  # the decode path `throughput` was measured on
        self.backend: Backend | None = None
        self.servicer: BlockServicer | None = None
        self.announcer: Announcer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._p2p = None
        self._stopped = threading.Event()
        self._started = False
        self.config = None

    @classmethod
    def from_options(cls, opts: HosterOptions, *, dht: hivemind.DHT | None = None, node_key: NodeKey | None = None,
                     initial_peers: Sequence[str] = (), host_maddrs: Sequence[str] | None = None,
                     network: NetworkOptions | None = None) -> Hoster:
        """The hoster `opts` describe (validated first); the DHT and identity come from the caller."""
        opts.validate()
        if not opts.model:
            raise ValueError("a hoster needs --model (a model directory or hub id)")
        return cls(opts.model, dht=dht, node_key=node_key, initial_peers=initial_peers, host_maddrs=host_maddrs,
                   network=network, **opts.hoster_kwargs())

    # ------------------------------------------------------------------ properties

    @property
    def dht(self) -> hivemind.DHT:
        assert self._dht is not None, "hoster not started"
        return self._dht

    @property
    def peer_id(self) -> str:
        return self.node_key.peer_id

    @property
    def maddrs(self) -> list[str]:
        return dial_order(visible_maddrs(self.dht))

    @property
    def start_block(self) -> int:
        return self.backend.start if self.backend else -1

    @property
    def end_block(self) -> int:
        return self.backend.end if self.backend else -1

    def info(self) -> dict:
        """The announcement payload (also the `rpc_info` answer)."""
        budget = self.backend.budget
        return Announcement(
            peer_id=self.peer_id, model=self.model_uid, start=self.backend.start, end=self.backend.end,
            num_blocks=self.config.num_hidden_layers, hidden_size=self.config.hidden_size,
            dtype=dtype_name(self.dtype), throughput=round(float(self.throughput), 3),
            cache_tokens_free=budget.free_tokens + (self.backend.prefix.tokens if self.backend.prefix else 0),
            cache_tokens_total=budget.total_tokens,  # cached prefixes give way to sessions: they count as free
            version=f"mesh-node/{version()}", state=self.state, relayed=bool(self.network.use_auto_relay),
            quant=self.quant, adapters=tuple(served(self.backend.span)), decode_path=self.backend.decode_path,
            decode_threads=self.backend.threads.announced,
        ).to_payload()

    def run_span(self, hidden: torch.Tensor, start: int | None = None, end: int | None = None) -> torch.Tensor:
        """Thread-safe stateless forward through the serving path (used by the probe duty)."""
        return self.backend.run_span(hidden, start, end)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Hoster:
        try:
            self._start()
        except BaseException:
            self.shutdown()
            raise
        return self

    def _start(self) -> None:
        self._started = True
        self.config = load_config(self.model_path)
        check_sources(self.adapter_sources, self.model_path, self.model_name)  # before the DHT: fail fast
        if self._dht is None:
            # a NetworkOptions from the CLI listens on every interface by default; the library on loopback
            kwargs = self.network.dht_kwargs() if self._network_given or self.host_maddrs else {}
            self._dht = start_dht_compat(self.node_key, self.initial_peers,
                                         record_validators=[AnnouncementValidator()], **kwargs)
        elif self._dht.peer_id.to_base58() != self.node_key.peer_id:
            raise ValueError("node_key does not match the DHT's peer id")
        start, end = self._choose_range()
        self.backend = self._make_backend(start, end)
        self.throughput = self._throughput(self.backend)
        event(log, "throughput_measured", tokens_per_s=round(self.throughput, 1), blocks=f"{start}:{end}")

        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="hoster-p2p", daemon=True)
        self._loop_thread.start()
        self.servicer = BlockServicer(self.backend, self.model_uid, self.info, session_timeout=self.session_timeout,
                                      max_length=self.max_length)
        self.servicer.receipts = ReceiptBook(self.node_key, self.model_uid)  # signed step receipts
        for hook in self.servicer_hooks:  # e.g. metrics wrapping the handlers, before they are registered
            hook(self.servicer)
        self._call(self._serve(), timeout=60)
        self.state = "online"
        self.announcer = Announcer(self.dht, self.node_key, self.model_uid, self.info,
                                   ttl=self.announce_ttl, period=self.announce_period)
        self.announcer.start()
        if self.rebalance_interval:
            threading.Thread(target=self._rebalance_loop, name="hoster-rebalance", daemon=True).start()
        event(log, "hoster_ready", peer=self.peer_id, model=self.model_uid, blocks=f"{start}:{end}",
              dtype=dtype_name(self.dtype), quant=self.quant, cache_tokens=self.backend.budget.total_tokens,
              decode_path=self.backend.decode_path)

    def _choose_range(self) -> tuple[int, int]:
        n_layers = self.config.num_hidden_layers
        start, end = self.requested
        if start is not None or end is not None:
            start = 0 if start is None else start
            end = n_layers if end is None else end
            if not 0 <= start < end <= n_layers:
                raise ValueError(f"blocks {start}:{end} out of range for a model with {n_layers} blocks")
            return start, end
        k = min(self.num_blocks_wanted or n_layers, n_layers)
        others = [Span(a.start, a.end, max(a.throughput, 1e-3), a.peer_id)
                  for a in read_announcements(self.dht, self.model_uid) if a.peer_id != self.peer_id]
        start, end = choose_blocks(n_layers, k, others)
        event(log, "blocks_chosen", blocks=f"{start}:{end}", others=len(others))
        return start, end

    def _make_backend(self, start: int, end: int) -> Backend:
        kernel, choices = self.linear_kernel, Choices()
        key = shape_key(self.config, start, end, self.dtype, kernel)
        cached = choices.get(key)
        auto = self.compile_mode == "auto" and auto_compiles(
            "auto", linear_kernel=kernel, device=self.device, quant=self.quant, adapters=bool(self.adapter_sources),
            cached=cached)
        if auto or self.compile_mode == "on":
            use_persistent_cache()
        span = load_blocks(self.model_path, start, end, self.dtype, self.device, progress=self.progress,
                           linear_kernel=kernel, quant=self.quant)
        load_span_adapters(span, self.adapter_sources, self.model_path, self.model_name, log)  # AdapterError: 1 line
        if self.cache_bytes is not None:
            budget = CacheBudget.from_bytes(self.cache_bytes, span.kv_bytes_per_token())
        else:
            budget = CacheBudget(self.cache_tokens or DEFAULT_CACHE_TOKENS)
        event(log, "blocks_loaded", blocks=f"{start}:{end}", weight_mb=round(span.weight_bytes() / 2**20, 1),
              cache_tokens=budget.total_tokens)
        backend = Backend(span, budget, gather_window=self.gather_window,
                          compile_decode="auto" if auto else self.compile_mode == "on")
        if auto:  # serves eagerly until the compiled step is ready and measured faster (small steps' threads first)
            backend.start_auto_compile(key, choices, on_done=lambda record: self._compiled(backend, record))
        elif self.compile_mode == "auto":  # measured eager on a quiet start: its thread count stands too
            backend.threads.decode = remembered(cached, backend.threads.max_threads)
        backend.warm_up()  # "on": compiles before the hoster measures its throughput and announces
        return backend

    def _compiled(self, backend: Backend, record: dict) -> None:
        """The background compile chose a path: re-measure the announced throughput on it, re-announce."""
        if backend is not self.backend or self._stopped.is_set():
            return
        path = record.get("path")
        if path != self._throughput_path and self.fixed_throughput is None:  # a re-timing may switch back
            self.throughput, self._throughput_path = backend.measure_throughput(), path
            event(log, "throughput_measured", tokens_per_s=round(self.throughput, 1), decode_path=path)
        if self.announcer is not None:
            self.announcer.publish()

    def _throughput(self, backend: Backend) -> float:
        self._throughput_path = "compiled" if backend.compiled is not None and backend.compiled.ready else "eager"
        if self.fixed_throughput is not None:
            return float(self.fixed_throughput)
        return backend.measure_throughput()

    async def _serve(self) -> None:
        self._p2p = await own_p2p_replica(self.dht)
        await self.servicer.add_p2p_handlers(self._p2p, namespace=NAMESPACE)

    async def _close_loop(self) -> None:
        """Close our P2P replica (not the daemon: the DHT owns it) and cancel leftover tasks."""
        if self._p2p is not None:
            await self._p2p.shutdown()
        me = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not me]
        for t in rest:
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def _call(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until shutdown (True) or timeout (False)."""
        return self._stopped.wait(timeout)

    def shutdown(self, grace: float = 2.0) -> None:
        """Withdraw the announcement, fail open sessions cleanly, stop serving, free everything."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.state = "offline"
        if self.announcer is not None:
            self.announcer.withdraw()
        if self._loop is not None and self.servicer is not None:
            try:
                self._loop.call_soon_threadsafe(self.servicer.begin_shutdown)
                deadline = time.monotonic() + grace
                while self.servicer.open_streams > 0 and time.monotonic() < deadline:
                    time.sleep(0.05)
                if self._p2p is not None:
                    self._call(self.servicer.remove_p2p_handlers(self._p2p, namespace=NAMESPACE), timeout=10)
            except Exception as e:
                event(log, "shutdown_step_failed", level=logging.WARNING, error=repr(e))
        if self.backend is not None:
            self.backend.shutdown()
        if self._loop is not None and self._loop.is_running():
            try:
                self._call(self._close_loop(), timeout=15)
            except Exception as e:
                event(log, "shutdown_step_failed", level=logging.WARNING, error=repr(e))
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._loop_thread is not None:
                self._loop_thread.join(timeout=10)
            if not self._loop.is_running():
                self._loop.close()
        if self._own_dht and self._dht is not None:
            try:
                self._dht.shutdown()
            except Exception:
                pass
        event(log, "hoster_stopped", peer=self.peer_id)

    # ------------------------------------------------------------------ rebalancing

    def _rebalance_loop(self) -> None:
        """Check coverage every ~`rebalance_interval` s, randomized +-50% so that hosters which lost
        the same peer at the same moment do not all move into the same gap (and back)."""
        while not self._stopped.wait(self.rebalance_interval * random.uniform(0.5, 1.5)):
            try:
                self.maybe_rebalance()
            except Exception as e:
                event(log, "rebalance_failed", level=logging.WARNING, error=repr(e))

    def maybe_rebalance(self) -> tuple[int, int] | None:
        """Move to a better span if coverage changed enough: drain sessions first, then reload."""
        n_layers = self.config.num_hidden_layers
        others = [Span(a.start, a.end, max(a.throughput, 1e-3), a.peer_id)
                  for a in read_announcements(self.dht, self.model_uid) if a.peer_id != self.peer_id]
        target = should_move(n_layers, (self.backend.start, self.backend.end), others, max(self.throughput, 1e-3))
        if target is None:
            return None
        event(log, "rebalance_start", old=f"{self.backend.start}:{self.backend.end}", new=f"{target[0]}:{target[1]}")
        self.state = "joining"  # clients route only to "online": no new sessions arrive
        self.announcer.publish()
        deadline = time.monotonic() + self.session_timeout
        while self.backend.sessions and time.monotonic() < deadline and not self._stopped.is_set():
            time.sleep(0.5)
        if self._stopped.is_set():
            return None
        old = self.backend
        new = self._make_backend(*target)
        self.throughput = self._throughput(new)
        self.servicer.backend = new
        self.backend = new
        old.shutdown()
        self.state = "online"
        self.announcer.publish()
        event(log, "rebalanced", blocks=f"{target[0]}:{target[1]}")
        return target


def install_signal_handlers(hoster: Hoster) -> None:
    """SIGINT/SIGTERM: withdraw the announcement and close sessions cleanly (main thread only)."""

    def handler(signum, frame):
        event(log, "signal", name=signal.Signals(signum).name)
        threading.Thread(target=hoster.shutdown, name="hoster-shutdown", daemon=False).start()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
