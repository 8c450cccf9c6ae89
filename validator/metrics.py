"""Prometheus metrics of one validator duty, read from its per-epoch state at scrape time.

Nothing is counted on the duty's path: `ValidatorDuty.epochs` already holds each epoch's
facts (probe posted, commits frozen, reveals verified, scores, proposal, attestation). The
collector turns a fact into a counter increment the first time a scrape sees it, so the
`_total` counters stay monotonic although the duty keeps only its last `keep_reports`
epochs (scrape more often than that many epochs: every few seconds is plenty).

    mesh_validator_epoch, mesh_validator_epoch_progress, mesh_validator_epoch_phase{phase},
    mesh_validator_elected (1 if elected for the current epoch), mesh_validator_last_scored_epoch,
    mesh_validator_probes_posted_total, mesh_validator_probes_seen_total,
    mesh_validator_hoster_commits_seen_total, mesh_validator_reveals_seen_total{kind,status},
    mesh_validator_epochs_scored_total, mesh_validator_epochs_skipped_total,
    mesh_validator_score_commits_total, mesh_validator_score_reveals_total,
    mesh_validator_proposals_total, mesh_validator_attestations_total,
    mesh_validator_attestations_refused_total,
    mesh_validator_hoster_score{peer_id}, mesh_validator_validator_score{peer_id} (latest scored epoch)
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from consensus.phases import Phase, phase_of

_COUNTERS = {
    "probes_posted": "probes this validator posted",
    "probes_seen": "epochs whose probe this validator found or posted",
    "hoster_commits_seen": "hoster commits in the frozen commit snapshots",
    "epochs_scored": "epochs this validator scored",
    "epochs_skipped": "epochs left unscored (started or woke too late)",
    "score_commits": "score-set commits stored in the DHT",
    "score_reveals": "score-set reveals stored in the DHT",
    "proposals": "consensus submissions this validator proposed on chain",
    "attestations": "submissions of others this validator attested",
    "attestations_refused": "submissions this validator refused to attest",
}


def _facts(st: Any, settled: bool) -> dict[str, int]:
    """Countable facts of one epoch's state -> amount (0: not (yet) true). `settled`: a later epoch exists."""
    return {
        "probes_posted": int(bool(st.probe_posted_by_us)),
        "probes_seen": int(st.probe is not None),
        "hoster_commits_seen": len(st.hoster_commits) if st.hoster_commits is not None else 0,
        "epochs_scored": int(st.hoster_fixed is not None),
        "epochs_skipped": int(st.skipped is not None),
        "score_commits": int(st.score_committed_block is not None),
        "score_reveals": int(st.score_revealed_block is not None),
        "proposals": int(st.proposed and st.attestation == "proposer"),
        "attestations": int(st.attested and st.attestation != "proposer"),
        # a refusal is final (the duty never retries it); seen mid-attest it might still turn into an attestation
        "attestations_refused": int(settled and not st.attested and st.attestation is not None),
    }


class _ValidatorCollector(Collector):
    def __init__(self, duty: Any):
        self.duty = duty
        self._lock = threading.Lock()
        self._seen: dict[str, set[int]] = {k: set() for k in _COUNTERS}
        self._totals: Counter[str] = Counter()
        self._reveals: Counter[tuple[str, str]] = Counter()
        self._reveals_seen: set[int] = set()

    def _update(self, epochs: dict[int, Any]) -> None:
        latest = max(epochs) if epochs else None
        for e, st in epochs.items():
            for name, amount in _facts(st, e != latest).items():
                if amount and e not in self._seen[name]:
                    self._seen[name].add(e)
                    self._totals[name] += amount
            if st.hoster_fixed is not None and e not in self._reveals_seen:
                self._reveals_seen.add(e)
                for kind, statuses in (("hoster", st.hoster_status), ("validator", st.validator_status)):
                    for status in statuses.values():
                        self._reveals[(kind, str(status))] += 1
        if latest is not None:  # forget epochs the duty forgot (they never come back)
            oldest = min(epochs)
            for seen in (*self._seen.values(), self._reveals_seen):
                seen.difference_update({e for e in seen if e < oldest})

    def collect(self):
        duty = self.duty
        epochs = dict(duty.epochs)  # the duty thread adds and prunes epochs; work on a snapshot
        with self._lock:
            self._update(epochs)
            totals, reveals = dict(self._totals), dict(self._reveals)
        view = getattr(duty.registry, "_view", None)  # the chain view the duty last used (no chain call here)
        if view is not None:
            yield _gauge("mesh_validator_epoch", "current chain epoch", view.epoch)
            yield _gauge("mesh_validator_epoch_progress", "progress through the current epoch, 0..1", view.progress)
            try:
                phase = phase_of(view.progress)
            except ValueError:  # progress outside [0, 1): no phase rather than a failed scrape
                phase = None
            g = GaugeMetricFamily("mesh_validator_epoch_phase", "1 for the current epoch phase", labels=["phase"])
            for p in Phase:
                g.add_metric([p.value], 1 if p is phase else 0)
            yield g
            st = epochs.get(view.epoch)
            if st is not None and st.elected is not None:
                yield _gauge("mesh_validator_elected", "1 if this validator is elected for the current epoch",
                             1 if st.elected == duty.peer_id else 0)
        for name, doc in _COUNTERS.items():
            c = CounterMetricFamily(f"mesh_validator_{name}", doc)
            c.add_metric([], totals.get(name, 0))
            yield c
        c = CounterMetricFamily("mesh_validator_reveals_seen", "reveals verified, by kind and outcome",
                                labels=["kind", "status"])
        for (kind, status), n in sorted(reveals.items()):
            c.add_metric([kind, status], n)
        yield c
        scored = [e for e, st in epochs.items() if st.hoster_fixed is not None]
        if scored:
            st = epochs[max(scored)]
            yield _gauge("mesh_validator_last_scored_epoch", "latest epoch this validator scored", st.epoch)
            for name, scores in (("hoster", st.hoster_scores), ("validator", st.validator_scores)):
                g = GaugeMetricFamily(f"mesh_validator_{name}_score", f"{name} scores of the latest scored epoch",
                                      labels=["peer_id"])
                for peer, score in sorted(scores.items()):
                    g.add_metric([peer], float(score))
                yield g
            yield _gauge("mesh_validator_disputed_blocks", "probe blocks of the latest scored epoch whose hosters "
                         "disagreed with no reference to decide (left out of their scores)", len(st.disputed))
            yield _gauge("mesh_validator_referenced_blocks", "probe blocks of the latest scored epoch scored "
                         "against a validator's reference output", len(st.referenced))


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    g.add_metric([], value)
    return g


class ValidatorMetrics:
    """Register `duty`'s metrics in `registry` (a node passes its one registry; default: a new one)."""

    def __init__(self, duty: Any, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.registry.register(_ValidatorCollector(duty))
