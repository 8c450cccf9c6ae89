"""The two small interfaces the HTTP API talks to, so it never depends on how text is made.

`GenerationBackend` produces tokens (in-process transformers, or a swarm of hosters);
`SubnetView` answers read-only questions about the subnet (chain + DHT + validator
reports). The routes only see these protocols, so tests run the API against a real
local model and the node runs it against the swarm, with the same code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from subnet.client.sampling import TokenLogprobs


@dataclass(frozen=True)
class ModelCard:
    """A model the backend can serve right now."""

    id: str
    owned_by: str = "mesh-node"
    created: int = 0
    max_context: int | None = None  # prompt + completion tokens, if known
    num_blocks: int | None = None


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters with OpenAI semantics (temperature 0 means greedy)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()  # enforced on text by the API layer; backends may ignore it
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    top_k: int = 0  # 0 or -1: disabled
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: int | None = None  # None: off; k: report the chosen token's logprob and k alternatives
    speculative: bool | int | None = None  # speculative decoding (swarm backend): False/0 off, True/None default, k
    # a `subnet.client.constraints.Grammar` (response_format, forced tool calls): masks logits before sampling
    constraint: Any = field(default=None, compare=False)


@dataclass(frozen=True)
class TokenEvent:
    """One step of a generation.

    `text` is the decoded text this token adds (may be "" while a multi-byte character
    is incomplete). The last event of a stream has `finish_reason` "stop" (end of
    sequence) or "length" (max_tokens reached); its `token_id` may be None.
    `logprobs` (when `GenerationParams.logprobs` is set) comes from the client's sampler: the
    log-softmax of the processed logits the token was chosen from.
    """

    token_id: int | None
    text: str
    finish_reason: str | None = None
    logprobs: TokenLogprobs | None = None
    index: int = 0  # the row (choice) of a batched stream (`stream_batch`)


class BackendError(Exception):
    """Generation could not run; `status` is the HTTP status the API should answer with."""

    def __init__(self, message: str, *, status: int = 503, code: str = "backend_unavailable"):
        super().__init__(message)
        self.status = status
        self.code = code


@runtime_checkable
class GenerationBackend(Protocol):
    def models(self) -> list[ModelCard]:
        """Models the backend can serve now (the swarm covers all their blocks)."""
        ...

    def tokenizer(self, model: str) -> Any:
        """A Hugging Face tokenizer for `model` (chat template, encode, decode)."""
        ...

    def stream(self, model: str, prompt_ids: Sequence[int], params: GenerationParams) -> AsyncIterator[TokenEvent]:
        """Async-iterate the generated tokens.

        Closing or cancelling the iterator must stop the generation (the API does
        that when an HTTP client disconnects or a stop string matches).
        """
        ...

    # Optional: `stream_batch(model, prompt_ids, params, n)` runs n choices of one prompt as one
    # batched generation (rows seeded seed, seed+1, ...), events tagged with `index`; the API
    # uses it for `n > 1` when the backend has it (`subnet.api.batching`).


class BatchedBackend:
    """Mixin for backends whose one generation is a batch of one: `stream` is `stream_batch(..., 1)`."""

    async def stream(self, model: str, prompt_ids: Sequence[int],
                     params: GenerationParams) -> AsyncIterator[TokenEvent]:
        events = self.stream_batch(model, prompt_ids, params, 1)  # type: ignore[attr-defined]
        try:
            async for ev in events:
                yield ev
        finally:
            await events.aclose()


# ---- subnet views ---------------------------------------------------------------------


@dataclass
class NodeView:
    node_id: int
    peer_id: str
    node_class: str
    stake: int  # smallest units (18 decimals)
    reputation: float
    hotkey: str = ""
    coldkey: str = ""
    blocks: list[dict] = field(default_factory=list)  # [{"model", "start", "end", "throughput", ...}]
    blocks_served: int = 0
    last_score: float | None = None  # latest on-chain score, as a fraction
    role: str = "none"  # hoster | validator | both | none: from its DHT announcements and chain class
    state: str = "offline"  # online | joining | offline: its announcements in the DHT right now
    throughput: float | None = None  # tokens/s it announces (summed over its spans); None if not announced
    cache_tokens_free: int | None = None
    cache_tokens_total: int | None = None
    last_seen: float | None = None  # unix time this API last saw it announced (None: never)
    reputation_change: dict | None = None  # latest {"epoch", "before", "after", "reason", "detail"}


@dataclass
class BlockCoverage:
    model: str
    num_blocks: int
    blocks: list[list[str]]  # per block index: peer ids serving it
    complete: bool
    cache_tokens_free: int = 0
    cache_tokens_total: int = 0


@dataclass
class EpochView:
    epoch: int
    probe_seed: str | None = None  # hex
    elected_validator: int | None = None
    commits: list[str] = field(default_factory=list)  # signer peer ids
    reveals: list[str] = field(default_factory=list)  # signers whose reveal verified
    reveal_status: dict[str, str] = field(default_factory=dict)  # peer id -> verification outcome
    scores: dict[str, float] = field(default_factory=dict)  # hoster peer id (or node id) -> score
    validator_scores: dict[str, float] = field(default_factory=dict)  # validator peer id -> score
    proposal: list[dict] | None = None  # [{"node_id", "score"}] as on chain (score as fraction)
    attestations: list[int] = field(default_factory=list)  # node ids
    attestation_ratio: float | None = None
    outcome: str = "pending"  # pending | accepted | rejected | no_proposal


@dataclass
class RewardView:
    epoch: int
    node_id: int
    amount: int  # smallest units; negative for a slash
    kind: str = "reward"  # as the chain reports it (e.g. node, validator, slash)


@runtime_checkable
class SubnetView(Protocol):
    """Read-only subnet state for the dashboard and `/subnet/*` (calls may block: run in a thread)."""

    def summary(self) -> dict: ...

    def nodes(self) -> list[NodeView]: ...

    def coverage(self) -> list[BlockCoverage]: ...

    def epochs(self, limit: int = 20) -> list[EpochView]: ...

    def rewards(self, limit: int = 20) -> list[RewardView]: ...
