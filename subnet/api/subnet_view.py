"""`ChainSubnetView`: the `SubnetView` over a chain, the DHT's hoster announcements and
(optionally) a validator's per-epoch reports.

Chain reads go through the `chain.base.Chain` interface only; devnet extras
(`get_epoch_result` with rewards, `get_validator_snapshot`) are used when the backend has
them. Finished epochs never change, so they are cached; live reads are cached for a
second so a few dashboards cannot hammer the chain.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from typing import Any

from chain.base import Chain
from chain.types import SCORE_SCALE, UNKNOWN_REASON, ConsensusSubmission, NodeClass, ReputationChange
from consensus.probe import probe_seed
from subnet.api.backends import BlockCoverage, EpochView, NodeView, RewardView
from subnet.swarm.announcements import read_announcements

log = logging.getLogger(__name__)

ReportSource = Callable[[], Mapping[int, Any]]
"""Returns {epoch: report}, e.g. `lambda: validator_duty.reports`. A report (dict or object)
is read for `hoster_commits` (peer ids), `hoster_reveals` ({peer id: status}, "valid" counts
as revealed), `hoster_scores` and `validator_scores` ({peer id: float}); the shorter names
`commits`, `reveals` (peer ids) and `scores` are accepted too."""

VALID = "valid"


class _TTL:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self._items: dict[Any, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: Any, compute: Callable[[], Any]) -> Any:
        now = time.monotonic()
        with self._lock:
            hit = self._items.get(key)
            if hit and now - hit[0] < self.seconds:
                return hit[1]
        value = compute()
        with self._lock:
            self._items[key] = (now, value)
        return value


def _field(report: Any, name: str) -> Any:
    if isinstance(report, Mapping):
        return report.get(name)
    return getattr(report, name, None)


def _peer_list(value: Any) -> list[str]:
    if not value:
        return []
    if isinstance(value, Mapping):
        return sorted(str(k) for k in value)
    return sorted(str(v) for v in value)


def _rewards(epoch: int, result: Mapping) -> list[RewardView]:
    return [RewardView(epoch=epoch, node_id=int(r["node_id"]), amount=int(r["amount"]), kind=str(r.get("kind", "")))
            for r in result.get("rewards", ())]


def _reputation_changes(epoch: int, result: Mapping) -> list[ReputationChange]:
    return [ReputationChange(node_id=int(c["node_id"]), epoch=epoch, before=float(c["before"]),
                             after=float(c["after"]), reason=str(c.get("reason") or UNKNOWN_REASON),
                             detail=str(c.get("detail", "")))
            for c in result.get("reputation_changes", ())]


def role_of(node_class: NodeClass, announces: bool) -> str:
    """hoster (announces blocks in the DHT), validator (Validator class on chain), both, or none."""
    validator = node_class >= NodeClass.VALIDATOR
    return {(True, True): "both", (True, False): "hoster", (False, True): "validator"}.get(
        (announces, validator), "none")


class ChainSubnetView:
    def __init__(
        self,
        chain: Chain,
        subnet_id: int,
        *,
        dht: Any = None,
        models: Iterable[str] | Callable[[], Iterable[str]] = (),
        reports: ReportSource | None = None,
        cache_seconds: float = 1.0,
    ):
        self.chain = chain
        self.subnet_id = subnet_id
        self.dht = dht
        self._models = models
        self._reports = reports
        self._live = _TTL(cache_seconds)
        self._final: dict[int, EpochView] = {}
        self._final_rewards: dict[int, list[RewardView]] = {}
        self._final_reputation: dict[int, list[ReputationChange]] = {}
        self._last_seen: dict[str, float] = {}  # peer id -> unix time its announcement was last read
        self._hosters: set[str] = set()  # peer ids ever seen announcing (a hoster that went offline)
        self._seen_reputation: dict[int, float] = {}  # for chains that keep no reasons
        self._observed: deque[ReputationChange] = deque(maxlen=200)

    # ---- helpers -------------------------------------------------------------------------
    def _model_ids(self) -> list[str]:
        models = self._models() if callable(self._models) else self._models
        return sorted(set(models))

    def _announcements(self) -> dict[str, list[Any]]:
        if self.dht is None:
            return {}

        def read() -> dict[str, list[Any]]:
            out: dict[str, list[Any]] = {}
            for model in self._model_ids():
                try:
                    out[model] = read_announcements(self.dht, model)
                except Exception as e:  # one unreadable key must not hide the rest
                    log.warning("announcements of %s unreadable: %s", model, e)
                    out[model] = []
            now = time.time()
            for items in out.values():
                for a in items:
                    self._last_seen[a.peer_id] = now
                    self._hosters.add(a.peer_id)
            return out

        return self._live.get("announcements", read)

    def _epoch_info(self):
        return self._live.get("epoch", lambda: self.chain.get_epoch_info(self.subnet_id))

    def _nodes(self):
        return self._live.get("nodes", lambda: self.chain.get_subnet_nodes(self.subnet_id))

    def _report(self, epoch: int) -> Any:
        if self._reports is None:
            return None
        try:
            return self._reports().get(epoch)
        except Exception as e:
            log.debug("validator reports unavailable: %s", e)
            return None

    # ---- SubnetView ----------------------------------------------------------------------
    def summary(self) -> dict:
        info = self._epoch_info()
        subnet = self._live.get("subnet", lambda: self.chain.get_subnet(self.subnet_id))
        return {
            "subnet_id": self.subnet_id,
            "name": subnet.name,
            "state": subnet.state.value,
            "owner": subnet.owner,
            "min_stake": str(subnet.min_stake),
            "max_stake": str(subnet.max_stake),
            "epoch": info.epoch,
            "block": info.block,
            "progress": info.progress,
            "blocks_per_epoch": info.blocks_per_epoch,
            "seconds_left": info.seconds_left,
            "block_time": info.block_time,
            "models": self._model_ids(),
        }

    def nodes(self) -> list[NodeView]:
        anns = self._announcements()
        by_peer: dict[str, list[dict]] = {}
        for model, items in anns.items():
            for a in items:
                by_peer.setdefault(a.peer_id, []).append({
                    "model": model, "start": a.start, "end": a.end, "throughput": a.throughput,
                    "state": a.state, "cache_tokens_free": a.cache_tokens_free,
                    "cache_tokens_total": a.cache_tokens_total,
                })
        last_scores = self._last_scores()
        nodes = sorted(self._nodes(), key=lambda n: n.node_id)
        self._observe_reputation(nodes)
        changes: dict[int, dict] = {}
        for c in self.reputation_changes():  # newest first: keep each node's latest
            changes.setdefault(c.node_id, asdict(c))
        out = []
        for n in nodes:
            spans = by_peer.get(n.peer_id, [])
            states = {s["state"] for s in spans}
            out.append(NodeView(
                node_id=n.node_id, peer_id=n.peer_id, node_class=NodeClass(n.node_class).name.lower(),
                stake=int(n.stake), reputation=float(n.reputation), hotkey=n.hotkey, coldkey=n.coldkey,
                blocks=spans, blocks_served=sum(s["end"] - s["start"] for s in spans),
                last_score=last_scores.get(n.node_id),
                role=role_of(NodeClass(n.node_class), n.peer_id in self._hosters),
                state="online" if "online" in states else "joining" if states else "offline",
                throughput=sum(s["throughput"] for s in spans) if spans else None,
                cache_tokens_free=sum(s["cache_tokens_free"] for s in spans) if spans else None,
                cache_tokens_total=sum(s["cache_tokens_total"] for s in spans) if spans else None,
                last_seen=self._last_seen.get(n.peer_id), reputation_change=changes.get(n.node_id),
            ))
        return out

    def _observe_reputation(self, nodes) -> None:
        """Where the chain keeps no reasons (Hypertensor), note changes as this view sees them."""
        if hasattr(self.chain, "get_epoch_result"):
            return
        epoch = self._epoch_info().epoch
        for n in nodes:
            before = self._seen_reputation.get(n.node_id)
            if before is not None and before != float(n.reputation):
                self._observed.appendleft(ReputationChange(n.node_id, epoch, before, float(n.reputation),
                                                           UNKNOWN_REASON, "the chain reports no reason"))
            self._seen_reputation[n.node_id] = float(n.reputation)

    def _last_scores(self) -> dict[int, float]:
        info = self._epoch_info()
        for e in range(info.epoch, max(-1, info.epoch - 4), -1):
            sub = self._submission(e)
            if sub is not None:
                return {s.node_id: s.score / SCORE_SCALE for s in sub.data}
        return {}

    def coverage(self) -> list[BlockCoverage]:
        out = []
        for model, items in sorted(self._announcements().items()):
            num_blocks = max((a.num_blocks for a in items), default=0)
            blocks: list[list[str]] = [[] for _ in range(num_blocks)]
            for a in items:
                if a.state != "online":
                    continue
                for i in range(a.start, min(a.end, num_blocks)):
                    blocks[i].append(a.peer_id)
            out.append(BlockCoverage(
                model=model, num_blocks=num_blocks, blocks=[sorted(b) for b in blocks],
                complete=num_blocks > 0 and all(blocks),
                cache_tokens_free=sum(a.cache_tokens_free for a in items),
                cache_tokens_total=sum(a.cache_tokens_total for a in items),
            ))
        return out

    def _submission(self, epoch: int) -> ConsensusSubmission | None:
        return self._live.get(("submission", epoch),
                              lambda: self.chain.get_consensus_submission(self.subnet_id, epoch))

    def _result(self, epoch: int) -> dict | None:
        getter = getattr(self.chain, "get_epoch_result", None)
        if getter is None:
            return None
        try:
            return getter(self.subnet_id, epoch)
        except Exception:
            return None

    def _epoch(self, epoch: int, current: int) -> EpochView:
        if epoch in self._final:
            return self._final[epoch]
        view = EpochView(epoch=epoch)
        try:
            view.probe_seed = probe_seed(self.chain.get_epoch_randomness(self.subnet_id, epoch),
                                         self.subnet_id, epoch).hex()
        except Exception:
            view.probe_seed = None
        try:
            view.elected_validator = self.chain.get_elected_validator(self.subnet_id, epoch)
        except Exception:
            view.elected_validator = None
        sub = self.chain.get_consensus_submission(self.subnet_id, epoch)
        if sub is not None:
            view.proposal = [{"node_id": s.node_id, "score": s.score / SCORE_SCALE} for s in sub.data]
            view.attestations = sorted(sub.attestations)
        report = self._report(epoch)
        if report is not None:
            view.commits = _peer_list(_field(report, "hoster_commits") or _field(report, "commits"))
            status = _field(report, "hoster_reveals")
            if isinstance(status, Mapping):
                view.reveal_status = {str(k): str(v) for k, v in status.items()}
                view.reveals = sorted(k for k, v in view.reveal_status.items() if v == VALID)
            else:
                view.reveals = _peer_list(_field(report, "reveals"))
            scores = _field(report, "hoster_scores")
            if not isinstance(scores, Mapping):
                scores = _field(report, "scores")
            if isinstance(scores, Mapping):
                view.scores = {str(k): float(v) for k, v in scores.items()}
            vscores = _field(report, "validator_scores")
            if isinstance(vscores, Mapping):
                view.validator_scores = {str(k): float(v) for k, v in vscores.items()}
        if not view.scores and view.proposal:
            view.scores = {str(p["node_id"]): p["score"] for p in view.proposal}
        result = self._result(epoch)
        if result is not None:
            view.outcome = str(result.get("outcome", "pending"))
            validators = int(result.get("validators") or 0)
            if validators:
                view.attestation_ratio = int(result.get("attestors") or 0) / validators
            self._final_rewards[epoch] = _rewards(epoch, result)
            self._final_reputation[epoch] = _reputation_changes(epoch, result)
        elif sub is not None:
            validators = self._validator_count(epoch)
            if validators:
                view.attestation_ratio = len(sub.attestations) / validators
            view.outcome = "pending" if epoch >= current else "unknown"
        elif epoch < current:
            view.outcome = "no_proposal" if epoch < current - 1 else "pending"
        if epoch < current - 2 or (result is not None and self._reports is None):
            self._final[epoch] = view  # settled on chain, and validator reports for it are complete
        return view

    def _validator_count(self, epoch: int) -> int:
        snap = getattr(self.chain, "get_validator_snapshot", None)
        if snap is not None:
            try:
                return len(snap(self.subnet_id, epoch))
            except Exception:
                pass
        return sum(1 for n in self._nodes() if n.node_class >= NodeClass.VALIDATOR)

    def _first_epoch(self) -> int:
        """The subnet's registration epoch: nothing before it is worth a chain read.

        Only where epochs count from block 0 (devnet); Hypertensor counts subnet epochs
        from the subnet's slot, so there the bound is 0."""
        if not hasattr(self.chain, "get_epoch_result"):
            return 0
        info = self._epoch_info()
        subnet = self._live.get("subnet", lambda: self.chain.get_subnet(self.subnet_id))
        return max(0, subnet.registered_block // max(1, info.blocks_per_epoch))

    def epochs(self, limit: int = 20) -> list[EpochView]:
        current = self._epoch_info().epoch
        first = max(self._first_epoch(), current - limit + 1)
        return [self._epoch(e, current) for e in range(current, first - 1, -1)]

    def _settled(self, limit: int, cache: dict[int, list], parse: Callable[[int, Mapping], list]) -> list:
        """Per-epoch records of settled epochs (results never change once written), newest first."""
        current = self._epoch_info().epoch
        out: list = []
        for e in range(current, max(self._first_epoch() - 1, current - limit), -1):
            if e not in cache:
                result = self._result(e)
                if result is None:
                    if e < current - 2:
                        cache[e] = []  # settled without records
                    continue
                cache[e] = parse(e, result)
            out.extend(cache[e])
        return out

    def rewards(self, limit: int = 20) -> list[RewardView]:
        """Per-epoch payouts (negative amounts are slashes), newest epoch first."""
        return self._settled(limit, self._final_rewards, _rewards)

    def reputation_changes(self, limit: int = 20) -> list[ReputationChange]:
        """Reputation changes with the chain's reason, newest epoch first ("unknown" reasons where
        the chain keeps none: then only changes this view observed)."""
        if not hasattr(self.chain, "get_epoch_result"):
            return list(self._observed)
        return self._settled(limit, self._final_reputation, _reputation_changes)
