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
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from chain.base import Chain
from chain.types import SCORE_SCALE, ConsensusSubmission, NodeClass
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
        out = []
        for n in sorted(self._nodes(), key=lambda n: n.node_id):
            spans = by_peer.get(n.peer_id, [])
            out.append(NodeView(
                node_id=n.node_id, peer_id=n.peer_id, node_class=NodeClass(n.node_class).name.lower(),
                stake=int(n.stake), reputation=float(n.reputation), hotkey=n.hotkey, coldkey=n.coldkey,
                blocks=spans, blocks_served=sum(s["end"] - s["start"] for s in spans),
                last_score=last_scores.get(n.node_id),
            ))
        return out

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

    def rewards(self, limit: int = 20) -> list[RewardView]:
        """Per-epoch payouts (negative amounts are slashes), newest epoch first."""
        current = self._epoch_info().epoch
        out: list[RewardView] = []
        for e in range(current, max(self._first_epoch() - 1, current - limit), -1):
            if e not in self._final_rewards:
                result = self._result(e)
                if result is None:
                    if e < current - 2:
                        self._final_rewards[e] = []  # settled without payouts
                    continue
                self._final_rewards[e] = _rewards(e, result)
            out.extend(self._final_rewards[e])
        return out
