"""Keep the client's view of the swarm: who serves which blocks, how fast, who is banned.

Runs on the client loop only (no locks needed). Announcements are re-read from the DHT at
most every `refresh_interval` seconds (and at once when no route exists); hosters are pinged
with `rpc_info` before first use, and a hoster that fails a ping or a call is banned with
exponential backoff. With a chain registry, only hosters registered on chain are routed to;
a route's cost uses the step times this client measured where it has them (`find_route`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from subnet.client import discovery, transport
from subnet.client.deadlines import StepTimes
from subnet.client.evidence import make_publisher
from subnet.client.precision import route_in_one_class
from subnet.client.prefix import PrefixStore
from subnet.client.routing import BanList, RouteError, RouteStats, Span, find_route, has_adapter
from subnet.client.runtime import ClientRuntime
from subnet.client.send_align import SendAligner
from subnet.client.verification import Publisher, StepVerifier
from subnet.logs import event
from subnet.swarm.announcements import Announcement

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientConfig:
    """Timeouts and retry bounds (seconds); every network wait is bounded by one of these."""

    connect_timeout: float = 10.0  # opening a session on a hoster
    request_timeout: float = 30.0  # one inference step / forward
    ping_timeout: float = 3.0
    max_retries: int = 4  # re-routes per step before giving up
    refresh_interval: float = 5.0  # minimum seconds between DHT reads
    # one DHT read of the hoster list, lock wait included: a lookup can stall on a frozen peer, and
    # whoever waits for it (a re-route, a check holding tokens back) must not wait request_timeout
    dht_timeout: float = 10.0
    ban_base: float = 5.0
    ban_max: float = 300.0
    route_jitter: float = 0.05  # random cost spread to break ties between equal hosters
    # seconds added per hop beyond its ping (serialization, queueing, one more failure point)
    hop_penalty: float = 0.002
    push: bool = True  # hosters forward a step's output to the next hoster directly (fewer hops per token)
    # concurrent sessions on one route wait this long at most for each other to send a decode step
    # together (subnet/client/send_align.py); 0: each sends at once
    align_wait: float = 0.25
    wait_for_coverage: float = 0.0  # keep re-reading the DHT this long before a "cannot cover" error
    # Fast failure detection (subnet/client/deadlines.py): a step later than max(floor, factor x the
    # hoster's usual step time), scaled by positions, gets a liveness probe and then fails over;
    # request_timeout stays the outer bound. A closed connection fails the step at once regardless.
    step_deadline_floor: float = 2.0  # <= 0 disables per-step deadlines
    step_deadline_factor: float = 15.0
    first_step_deadline: float = 10.0  # a hoster whose step time was never measured
    probe_timeout: float = 1.0  # the liveness probe (rpc_info) of a hoster that missed a deadline
    # subnet/client/precision.py: least precise hoster class to use (None: any); mix classes in one session
    min_precision: str | None = None
    mix_precisions: bool = False
    # Client-side checks (subnet/client/verification.py): the first step each hoster serves in a
    # session, then this fraction of steps, is recomputed on other hosters; 0 with no warm-up: off.
    verify_fraction: float = 0.02
    verify_warmup: bool = True
    verify_background: bool = True  # random checks beside the token loop (first-step checks always block)
    # subnet/client/prefix.py: a session whose prompt extends a recently closed one forks the KV its
    # hosters kept (only the new tokens travel and are computed)
    prefix_reuse: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.verify_fraction <= 1.0:
            raise ValueError(f"verify_fraction must be in [0, 1], got {self.verify_fraction!r}")
        if not self.align_wait >= 0.0:  # NaN too: a wait nobody could honour
            raise ValueError(f"align_wait must be >= 0 seconds (0: off), got {self.align_wait!r}")


class SequenceManager:
    """Routes for one model (`model_uid`, `num_blocks` blocks) over the current swarm."""

    def __init__(self, runtime: ClientRuntime, model_uid: str, num_blocks: int, *, hidden_size: int = 0,
                 config: ClientConfig | None = None, registry=None):
        self.runtime = runtime
        # a `ChainRegistry`: route only to hosters registered on chain (None: any signed announcement)
        self.registry = registry
        self.model_uid = model_uid
        self.num_blocks = num_blocks
        self.hidden_size = hidden_size
        self.config = config or ClientConfig()
        self.bans = BanList(self.config.ban_base, self.config.ban_max)
        self.stats = RouteStats()
        self.step_times = StepTimes(self.config.step_deadline_floor, self.config.step_deadline_factor,
                                    self.config.first_step_deadline)
        self._servers: list[Announcement] = []
        self._fetched_at = -1e9
        self._refresh_lock: asyncio.Lock | None = None
        self._refresh_task: asyncio.Future | None = None
        # where evidence against a hoster caught by a check goes (subnet.client.evidence); None: logged only
        self.evidence_publisher: Publisher | None = None
        if registry is not None and getattr(registry, "subnet_id", None) is not None:
            self.evidence_publisher = make_publisher(runtime.dht, registry.subnet_id)
        self.aligner = SendAligner(self.config.align_wait)  # concurrent sessions' steps sent together
        self.prefix_store = PrefixStore() if self.config.prefix_reuse else None  # closed sessions, by content

    def make_verifier(self) -> StepVerifier | None:
        """A session's checker per `verify_fraction`/`verify_warmup` (None when both are off)."""
        cfg = self.config
        if cfg.verify_fraction <= 0 and not cfg.verify_warmup:
            return None
        return StepVerifier(cfg.verify_fraction, warmup=cfg.verify_warmup, publish=self.evidence_publisher,
                            background=cfg.verify_background)

    @property
    def p2p(self):
        return self.runtime.p2p

    async def servers(self, force: bool = False) -> list[Announcement]:
        """Announced online hosters of this model.

        Stale-while-revalidate: once a list exists, a stale one is returned at once while a
        background task re-reads the DHT (a DHT lookup can stall on a dead peer, and failover
        should not wait for it); `force` waits for a fresh read.
        """
        stale = time.monotonic() - self._fetched_at > self.config.refresh_interval
        if force or self._fetched_at < 0:
            return await self._refresh()
        if stale and (self._refresh_task is None or self._refresh_task.done()):
            self._refresh_task = asyncio.ensure_future(self._refresh())
            self._refresh_task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return self._servers

    async def _refresh(self) -> list[Announcement]:
        """Read the DHT (asyncio.TimeoutError after `dht_timeout`, waiting for another read included)."""
        if self._refresh_lock is None:
            self._refresh_lock = asyncio.Lock()

        async def read() -> list[Announcement]:
            async with self._refresh_lock:
                loop = asyncio.get_running_loop()
                fetched = await loop.run_in_executor(None, discovery.read_servers, self.runtime.dht, self.model_uid,
                                                     self.registry)
                self._servers = [s for s in fetched if self._compatible(s)]
                self._fetched_at = time.monotonic()
            return self._servers

        return await asyncio.wait_for(read(), self.config.dht_timeout)

    def _compatible(self, s: Announcement) -> bool:
        if s.num_blocks and s.num_blocks != self.num_blocks:
            return False
        if s.hidden_size and self.hidden_size and s.hidden_size != self.hidden_size:
            return False
        return s.end <= self.num_blocks

    async def ping(self, peer_id: str) -> float | None:
        """Round-trip time of `rpc_info`, or None (and a ban) when the hoster does not answer."""
        t0 = time.perf_counter()
        try:
            await transport.rpc_info(self.p2p, peer_id, self.config.ping_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.report_failure(peer_id, e)
            return None
        rtt = time.perf_counter() - t0
        self.stats.record_ping(peer_id, rtt)
        return rtt

    async def alive(self, peer_id: str) -> bool:
        """Whether the hoster answers `rpc_info` within `probe_timeout` (no ban: the caller decides)."""
        try:
            await transport.rpc_info(self.p2p, peer_id, self.config.probe_timeout)
        except asyncio.CancelledError:
            raise
        except Exception:
            return False
        return True

    async def _ping_unmeasured(self, servers: Iterable[Announcement]) -> None:
        todo = {s.peer_id for s in servers if s.peer_id not in self.stats.pings and not self.bans.is_banned(s.peer_id)}
        if todo:
            await asyncio.gather(*(self.ping(p) for p in todo))

    async def make_route(self, start: int = 0, end: int | None = None, *, cache_tokens_needed: int = 0,
                         exclude: Iterable[str] = (), precision: str | None = None,
                         adapter: str | None = None, refresh: bool = True,
                         wait_for_coverage: float | None = None) -> list[Span]:
        """Cheapest live chain covering [start, end); raises RouteError (after refreshing) if none.

        Hosters of one precision class only (`precision`, else the best class that covers), unless
        `config.mix_precisions`; never below `config.min_precision`. With `adapter`, only hosters
        that announce that LoRA adapter. `refresh=False`: only the hosters already known (no wait
        for the DHT; what optional work such as a check wants); `wait_for_coverage`: this call's
        own `config.wait_for_coverage`.
        """
        end = self.num_blocks if end is None else end
        exclude = set(exclude)
        wait = self.config.wait_for_coverage if wait_for_coverage is None else wait_for_coverage
        deadline = time.monotonic() + wait
        force = False
        while True:
            try:
                servers = await self.servers(force=force)
            except TimeoutError:  # the DHT read stalled (a frozen peer): route with what we know
                event(log, "dht_read_slow", logging.WARNING, model=self.model_uid,
                      timeout_s=self.config.dht_timeout)
                servers = self._servers
            relevant = [s for s in servers if s.start < end and s.end > start and has_adapter(s, adapter)]
            await self._ping_unmeasured(relevant)
            measured = {s.peer_id: t for s in relevant if (t := self.step_times.estimate(s.peer_id)) is not None}
            try:
                route = route_in_one_class(relevant, lambda group, measured=measured: find_route(
                    group, start, end, pings=self.stats.pings, load=self.stats.load,
                    step_times=measured,
                    exclude=exclude | self.bans.banned(), cache_tokens_needed=cache_tokens_needed,
                    jitter=self.config.route_jitter, hop_cost=self.config.hop_penalty,
                ), minimum=self.config.min_precision, pinned=precision, mix=self.config.mix_precisions)
                event(log, "route", model=self.model_uid, blocks=f"{start}:{end}",
                      route=" ".join(f"{s.peer_id[-6:]}[{s.start}:{s.end})" for s in route))
                return route
            except RouteError as e:
                if not refresh:
                    raise
                if not force:
                    force = True  # the cache may be stale: read the DHT once more at once
                    continue
                if time.monotonic() >= deadline:
                    known = ", ".join(f"{s.peer_id[-6:]}[{s.start}:{s.end})" for s in servers) or "none"
                    what = f"model {self.model_uid!r}" + (f" with adapter {adapter!r}" if adapter else "")
                    raise RouteError(
                        f"cannot serve {what}: {e}; announced hosters: {known}; "
                        f"banned: {len(self.bans.banned())}"
                    ) from None
                await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    def report_failure(self, peer_id: str, error: BaseException) -> None:
        duration = self.bans.ban(peer_id)
        self.stats.pings.pop(peer_id, None)  # measure again when the ban ends
        event(log, "hoster_failed", logging.WARNING, peer=peer_id, ban_s=round(duration, 1),
              error=f"{type(error).__name__}: {error}"[:300])

    def report_success(self, peer_id: str) -> None:
        self.bans.success(peer_id)
