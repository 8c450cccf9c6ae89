"""The validator's epoch duty (every Validator-class node runs it; the elected one also proposes).

Epoch `e`, by chain progress `p` (see `consensus.phases`):

- p in [0, 0.15): if elected for `e`, propose the on-chain set of `e-1` (computed in `e-1`)
  and post the probe of `e`; after p=0.10 any validator posts the probe if nobody has.
  Not elected: as soon as the submission is on chain, compare it with the own set of `e-1`
  and attest if equal (early: rewards decay).
- one grace block after p=0.50: freeze the hoster commits seen (later ones do not count);
  in [0.50, 0.60) reveal the own score set committed in `e-1`.
- one grace block after p=0.60: fetch and verify hoster reveals (of the frozen commits) and the validator
  reveals of `e-1` commits, score both, build the on-chain set of `e` and commit the hash of
  the own hoster score set of `e`.

Each epoch's facts are kept in `duty.epochs[e]`; `duty.reports` is the JSON-able view for the API.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from chain.base import Chain
from chain.types import AlreadyAttestedError, AlreadyProposedError, ChainError, NodeClass, ScoreEntry
from consensus.attestation import AttestationDecision, boundary_changes, compare
from consensus.class_scoring import declared_classes, score_hosters_by_class
from consensus.commit import commitment, new_salt
from consensus.encoding import encode_score_set, make_score_set
from consensus.evidence import apply_evidence
from consensus.phases import (
    COMMIT_START,
    PROBE_ELECTED_ONLY_END,
    PROPOSE_END,
    REVEAL_END,
    REVEAL_START,
    SCORE_START,
    RecordKind,
)
from consensus.probe import ProbeSpec, make_probe_spec
from consensus.scoring import DEFAULT_PARAMS, ScoringParams, onchain_scores, score_validators, to_fixed
from keys.node_key import NodeKey
from subnet.logs import event
from subnet.swarm.chain_view import ChainRegistry, EpochPosition
from subnet.swarm.epoch_loop import EpochDutyLoop
from subnet.swarm.record_admission import ConsensusRecordPolicy
from subnet.swarm.record_store import (
    fetch_probe,
    fetch_records,
    fetch_reveals,
    record_ttl,
    reveal_parts,
    store_record,
    store_reveal,
)
from validator.class_reference import verify_reference_reveals
from validator.journal import ValidatorJournal
from validator.reference import ReferencePublisher
from validator.verify import VALID, verify_hoster_reveals, verify_validator_reveals

log = logging.getLogger(__name__)

# A snapshot is frozen one grace block after its window closes (writers get the whole window
# plus the grace the storers allow) and must happen soon after that, or this node's view could
# include records that arrived late; past this slack the epoch is left unscored.
FREEZE_SLACK = 0.20


@dataclass
class ValidatorEpoch:
    epoch: int
    elected: str | None = None
    probe: ProbeSpec | None = None
    probe_poster: str | None = None
    probe_posted_by_us: bool = False
    hoster_commits: dict | None = None  # frozen at the end of the commit window
    hoster_status: dict[str, str] = field(default_factory=dict)
    hoster_scores: dict[str, float] = field(default_factory=dict)
    hoster_classes: dict[str, str] = field(default_factory=dict)  # declared precision class per committer
    hoster_fixed: dict[str, int] | None = None
    reference_commits: dict | None = None  # frozen with the hoster commits
    reference_status: dict[str, str] = field(default_factory=dict)
    disputed: dict[int, list[str]] = field(default_factory=dict)  # block -> hosters, no reference, no majority
    referenced: dict[int, list[str]] = field(default_factory=dict)  # block -> validators whose reference was used
    reference_conflicts: list[int] = field(default_factory=list)
    validator_status: dict[str, str] = field(default_factory=dict)
    validator_scores: dict[str, float] = field(default_factory=dict)
    validator_fixed: dict[str, int] = field(default_factory=dict)
    node_ids: dict[str, int] = field(default_factory=dict)
    node_classes: dict[int, int] = field(default_factory=dict)  # node id -> class when scored
    proposal: list[tuple[int, int]] | None = None  # our on-chain set of this epoch
    score_salt: bytes = b""
    score_commit: bytes = b""
    score_committed_block: int | None = None
    score_revealed_block: int | None = None  # revealed in epoch + 1
    # actions taken during this epoch about the previous one
    proposed: bool = False
    proposing: bool = False  # a proposal was (about to be) sent: after a restart, ask the chain first
    onchain: list[tuple[int, int]] | None = None  # the submission seen on chain in this epoch
    attested: bool = False
    attestation: str | None = None
    skipped: str | None = None
    guilty: list[str] = field(default_factory=list)  # hosters zeroed by valid evidence (validator.evidence)

    def report(self) -> dict:
        return {
            "epoch": self.epoch,
            "elected": self.elected,
            "probe_seed": self.probe.seed.hex() if self.probe else None,
            "probe_poster": self.probe_poster,
            "hoster_commits": sorted(self.hoster_commits or {}),
            "hoster_reveals": dict(self.hoster_status),
            "hoster_scores": dict(self.hoster_scores),
            "hoster_classes": dict(self.hoster_classes),
            "reference_reveals": dict(self.reference_status),
            "disputed_blocks": {str(b): list(p) for b, p in self.disputed.items()},
            "referenced_blocks": {str(b): list(v) for b, v in self.referenced.items()},
            "reference_conflicts": list(self.reference_conflicts),
            "validator_reveals": dict(self.validator_status),
            "validator_scores": dict(self.validator_scores),
            "scores": [{"node_id": n, "score": str(s)} for n, s in (self.proposal or [])],
            "score_commit": self.score_commit.hex() or None,
            "score_committed_block": self.score_committed_block,
            "score_revealed_block": self.score_revealed_block,
            "proposed_previous": self.proposed,
            "onchain_previous": None if self.onchain is None else [
                {"node_id": n, "score": str(s)} for n, s in self.onchain],
            "attested_previous": self.attested,
            "attestation": self.attestation,
            "skipped": self.skipped,
            "evidence_guilty": list(self.guilty),
        }


class ValidatorDuty(EpochDutyLoop):
    """Background validator loop; `start()` / `stop()`; reports in `reports`.

    `chain` must hold this node's hotkey (it signs proposals and attestations).
    `hidden_size`/`num_blocks` describe the served model (the probe shape and block list).
    """

    name = "validator-duty"

    def __init__(self, dht, chain: Chain, node_key: NodeKey, subnet_id: int, *, hidden_size: int, num_blocks: int,
                 params: ScoringParams = DEFAULT_PARAMS, policy: ConsensusRecordPolicy | None = None,
                 poll_interval: float | None = None, keep_reports: int = 32,
                 reference: ReferencePublisher | None = None, evidence=None,
                 journal: ValidatorJournal | None = None):
        self.evidence = evidence  # a validator.evidence.EvidenceChecker: hosters caught lying score 0
        self.dht, self.chain, self.node_key, self.subnet_id = dht, chain, node_key, subnet_id
        self.reference = reference  # set when this validator holds the weights (validator/reference.py)
        self.peer_id = node_key.peer_id
        self.hidden_size, self.num_blocks = hidden_size, num_blocks
        self.params = params
        self.policy = policy or ConsensusRecordPolicy(subnet_id, ChainRegistry(lambda: chain, subnet_id))
        self.poll_interval = poll_interval
        self.keep_reports = keep_reports
        self.journal = journal  # restart safety (validator/journal.py); None keeps everything in memory
        self.epochs: dict[int, ValidatorEpoch] = {}
        self._init_loop()

    @property
    def registry(self):
        return self.policy.registry

    def _state(self, epoch: int) -> ValidatorEpoch:
        st = self.epochs.get(epoch)
        if st is None:
            st = self.epochs[epoch] = ValidatorEpoch(epoch)
            if self.journal is not None:
                self.journal.restore(st)
            for old in sorted(self.epochs)[: -self.keep_reports]:
                del self.epochs[old]
        return st

    # ---- one step ----------------------------------------------------------------------------

    def tick(self, view: EpochPosition) -> None:
        e, p = view.epoch, view.progress
        st = self._state(e)
        prev = self.epochs.get(e - 1)
        if prev is None and self.journal is not None and self.journal.has(e - 1):
            prev = self._state(e - 1)  # restarted this epoch: the commit of e-1 must still be revealed/proposed
        if st.elected is None:
            st.elected = self.registry.elected_peer(e)
        elected = st.elected == self.peer_id

        if elected and not st.proposed and prev is not None and prev.proposal is not None and p < REVEAL_START:
            self._propose(st, prev)
        if not elected and not st.attested and st.attestation is None and prev is not None \
                and prev.proposal is not None:
            self._maybe_attest(st, prev)
        if st.probe is None and p < PROPOSE_END and (elected or p >= PROBE_ELECTED_ONLY_END):
            self._ensure_probe(st, view, elected)
        if self.reference is not None and COMMIT_START <= p < REVEAL_END:
            self.reference.tick(e, st.probe or self.expected_probe(e), view, keep=self.keep_reports)
        if REVEAL_START <= p < REVEAL_END and prev is not None and prev.score_committed_block is not None \
                and prev.score_revealed_block is None:
            self._reveal_scores(prev, view)
        grace = self.policy.grace_blocks / view.blocks_per_epoch
        commits_frozen_at, scored_at = REVEAL_START + grace, SCORE_START + grace
        if p >= commits_frozen_at and st.hoster_commits is None and st.skipped is None:
            if p < commits_frozen_at + FREEZE_SLACK:
                st.hoster_commits = fetch_records(self.dht, self.policy, e, RecordKind.HOSTER_COMMIT)
                st.reference_commits = fetch_records(self.dht, self.policy, e, RecordKind.REFERENCE_COMMIT)
                event(log, "hoster_commits_frozen", epoch=e, count=len(st.hoster_commits))
            else:
                st.skipped = "started after the commit window closed"
        if p >= scored_at and st.hoster_commits is not None and st.hoster_fixed is None and st.skipped is None:
            if p < scored_at + FREEZE_SLACK:
                self._score(st, view)
            else:
                st.skipped = "missed the scoring point"
        if p >= SCORE_START and st.hoster_fixed is not None and st.score_committed_block is None:
            self._commit_scores(st, view)

    # ---- steps ---------------------------------------------------------------------------------

    def expected_probe(self, epoch: int) -> ProbeSpec:
        randomness = self.registry.randomness(epoch)
        return make_probe_spec(randomness, self.subnet_id, epoch, hidden=self.hidden_size, num_blocks=self.num_blocks)

    def _ensure_probe(self, st: ValidatorEpoch, view: EpochPosition, elected: bool) -> None:
        expected = self.expected_probe(st.epoch)
        if not elected:
            found = fetch_probe(self.dht, self.policy, expected)
            if found is not None:
                st.probe, st.probe_poster = found
                return
        if store_record(self.dht, self.node_key, self.subnet_id, st.epoch, RecordKind.PROBE, expected.to_payload(),
                        block=view.block, ttl=record_ttl(view)):
            st.probe, st.probe_poster, st.probe_posted_by_us = expected, self.peer_id, True
            event(log, "probe_posted", epoch=st.epoch, seed=expected.seed.hex()[:16], elected=elected)

    def _score(self, st: ValidatorEpoch, view: EpochPosition) -> None:
        e = st.epoch
        spec = st.probe or self.expected_probe(e)
        st.probe = spec
        commits = st.hoster_commits or {}
        reveals, problems = fetch_reveals(self.dht, self.policy, e, RecordKind.HOSTER_REVEAL,
                                          {p: r.payload["parts"] for p, r in commits.items()})
        hv = verify_hoster_reveals(self.subnet_id, e, spec, commits, reveals, problems)
        refs = self._verified_references(st, spec)
        st.hoster_classes = declared_classes({p: r.payload for p, r in commits.items()})  # signed commits
        hs = score_hosters_by_class(hv.values, hv.status.keys(), classes=st.hoster_classes, references=refs,
                                    expected_shape=spec.shape, params=self.params)
        st.hoster_status, st.hoster_scores = hv.status, hs.scores
        st.disputed, st.referenced, st.reference_conflicts = hs.disputed, hs.referenced, hs.reference_conflicts
        for block, peers in hs.disputed.items():
            event(log, "block_disputed", logging.WARNING, epoch=e, block=block, hosters=",".join(peers))
        st.hoster_fixed = hs.fixed()
        if self.evidence is not None:
            st.guilty = sorted(self.evidence.guilty(e))
            st.hoster_fixed = apply_evidence(st.hoster_fixed, set(st.guilty))
            st.hoster_scores = {p: 0.0 if p in st.guilty else s for p, s in st.hoster_scores.items()}

        v_commits = fetch_records(self.dht, self.policy, e - 1, RecordKind.VALIDATOR_COMMIT) if e > 0 else {}
        v_reveals, v_problems = fetch_reveals(self.dht, self.policy, e, RecordKind.VALIDATOR_REVEAL,
                                              {p: r.payload["parts"] for p, r in v_commits.items()})
        vv = verify_validator_reveals(self.subnet_id, e - 1, v_commits, v_reveals, v_problems)
        nodes = self.registry.nodes()
        validators = [p for p, n in nodes.items() if n.node_class >= NodeClass.VALIDATOR]
        st.validator_status = vv.status
        st.validator_scores = score_validators(vv.values, validators, params=self.params)
        st.validator_fixed = {p: to_fixed(s) for p, s in st.validator_scores.items()}

        st.node_ids = {p: n.node_id for p, n in nodes.items() if n.node_class >= NodeClass.INCLUDED}
        st.node_classes = {n.node_id: int(n.node_class) for n in nodes.values()}
        st.proposal = onchain_scores(st.hoster_fixed, st.validator_fixed, st.node_ids, params=self.params)
        valid = sum(1 for s in hv.status.values() if s == VALID)
        event(log, "epoch_scored", epoch=e, hosters=len(hv.status), valid_reveals=valid,
              validators=len(vv.values), entries=len(st.proposal))

    def _verified_references(self, st: ValidatorEpoch, spec: ProbeSpec) -> dict:
        """Reference outputs {class: {validator: {block: tensor}}} of the frozen reference commits that open."""
        commits = st.reference_commits or {}
        reveals, problems = fetch_reveals(self.dht, self.policy, st.epoch, RecordKind.REFERENCE_REVEAL,
                                          {p: r.payload["parts"] for p, r in commits.items()})
        by_class, st.reference_status = verify_reference_reveals(self.subnet_id, st.epoch, spec, commits, reveals,
                                                                 problems)
        return by_class

    def _commit_scores(self, st: ValidatorEpoch, view: EpochPosition) -> None:
        if not st.score_salt:
            st.score_salt = new_salt()
            score_set = make_score_set(self.subnet_id, st.epoch, self.peer_id, st.hoster_fixed or {})
            st.score_commit = commitment(st.score_salt, encode_score_set(score_set))
            self._persist(st)  # the salt and set are on disk before the commitment leaves this node
        parts = reveal_parts(self.reveal_body(st))
        if store_record(self.dht, self.node_key, self.subnet_id, st.epoch, RecordKind.VALIDATOR_COMMIT,
                        {"commit": st.score_commit.hex(), "parts": parts}, block=view.block, ttl=record_ttl(view)):
            st.score_committed_block = view.block
            self._persist(st)
            event(log, "scores_committed", epoch=st.epoch, block=view.block)

    @staticmethod
    def reveal_body(st: ValidatorEpoch) -> dict:
        return {"salt": st.score_salt.hex(), "scores_epoch": st.epoch, "scores": dict(st.hoster_fixed or {})}

    def _reveal_scores(self, prev: ValidatorEpoch, view: EpochPosition) -> None:
        if store_reveal(self.dht, self.node_key, self.subnet_id, view.epoch, RecordKind.VALIDATOR_REVEAL,
                        self.reveal_body(prev), block=view.block, ttl=record_ttl(view)):
            prev.score_revealed_block = view.block
            self._persist(prev)
            event(log, "scores_revealed", epoch=prev.epoch, block=view.block)

    def build_proposal(self, prev: ValidatorEpoch) -> list[tuple[int, int]]:
        """The data proposed on chain for `prev.epoch` (the own set; tests may override)."""
        return list(prev.proposal or [])

    def _persist(self, st: ValidatorEpoch) -> None:
        if self.journal is not None:
            self.journal.save(st)

    def _propose(self, st: ValidatorEpoch, prev: ValidatorEpoch) -> None:
        if st.proposing:  # sent before a restart? the chain knows: never submit twice
            sub = self.chain.get_consensus_submission(self.subnet_id, st.epoch)
            if sub is not None:
                st.proposed = st.attested = True
                st.attestation = "proposer"  # only the elected validator (this node) can have proposed
                self._persist(st)
                return
        data = self.build_proposal(prev)
        st.proposing = True
        self._persist(st)
        try:
            receipt = self.chain.propose_attestation(self.subnet_id, [ScoreEntry(n, s) for n, s in data])
            st.proposed = st.attested = True
            st.attestation = "proposer"
            self._persist(st)
            event(log, "proposed", epoch=st.epoch, scores_epoch=prev.epoch, entries=len(data), block=receipt.block)
        except AlreadyProposedError:
            st.proposed = st.attested = True
            self._persist(st)
        except ChainError as e:
            event(log, "propose_failed", logging.WARNING, epoch=st.epoch, error=str(e)[:200])

    def _maybe_attest(self, st: ValidatorEpoch, prev: ValidatorEpoch) -> None:
        sub = self.chain.get_consensus_submission(self.subnet_id, st.epoch)
        if sub is None:
            return
        st.onchain = [(e.node_id, e.score) for e in sub.data]
        nodes = self.registry.nodes()
        eligible = {n.node_id for n in nodes.values() if n.node_class >= NodeClass.INCLUDED}
        boundary = boundary_changes(prev.node_classes, {n.node_id: int(n.node_class) for n in nodes.values()})
        decision: AttestationDecision = compare(st.onchain, prev.proposal or [], eligible=eligible,
                                                boundary_nodes=boundary)
        st.attestation = decision.reason
        if not decision.attest:
            event(log, "attestation_refused", logging.WARNING, epoch=st.epoch, reason=decision.reason[:200])
            return
        try:
            self.chain.attest(self.subnet_id)
            st.attested = True
            self._persist(st)
            event(log, "attested", epoch=st.epoch, scores_epoch=prev.epoch)
        except AlreadyAttestedError:
            st.attested = True
        except ChainError as e:
            st.attestation = None  # retry next tick
            event(log, "attest_failed", logging.WARNING, epoch=st.epoch, error=str(e)[:200])
