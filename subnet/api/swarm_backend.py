"""`SwarmBackend`: generation through the swarm with the client's `DistributedModelForCausalLM`.

The client owns routing, sessions, sampling and failover; this adapter maps OpenAI-style
parameters onto its `SamplingParams`, reports a model as servable only while online hosters
cover every block (`known_models` lists the others too), and turns routing failures into 503s.
A LoRA adapter is asked for as model `<model>:<adapter>` (listed while the hosters announcing it
cover every block; unknown to every hoster: 404 naming it).
Closing the stream (client disconnect, stop string) closes the client's `astream`, which
ends the remote session.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from keys import NodeKey
from subnet.api.backends import BackendError, BatchedBackend, GenerationParams, ModelCard, TokenEvent
from subnet.api.sampling import to_sampling_params
from subnet.client import DistributedModelForCausalLM, RouteError, SessionError
from subnet.client.runtime import client_record_validators
from subnet.model.blocks import model_uid
from subnet.swarm.dht import start_dht

log = logging.getLogger(__name__)


def start_client_dht(initial_peers: Sequence[str], model_uids: Sequence[str] = ()) -> Any:
    """A client-mode DHT peer with a fresh key, joined to `initial_peers`.

    hivemind's identity-collision check reads the key file as RSA and fails on our Ed25519
    keys; a freshly generated key cannot collide, so the check is skipped.
    """
    return start_dht(NodeKey.generate(), list(initial_peers), client_mode=True, check_if_identity_free=False,
                     record_validators=client_record_validators(model_uids))


def covers_all(spans: Sequence[tuple[int, int]], num_blocks: int) -> bool:
    """True when the union of `[start, end)` spans covers `[0, num_blocks)`."""
    reach = 0
    for start, end in sorted(spans):
        if start > reach:
            return False
        reach = max(reach, end)
    return reach >= num_blocks


class SwarmBackend(BatchedBackend):
    """Serves one or more models whose blocks run on hosters (one client model each)."""

    def __init__(self, models: Any, *, coverage_ttl: float = 2.0, max_context: int | None = None):
        models = models if isinstance(models, (list, tuple)) else [models]
        self._models = {m.model_uid: m for m in models}
        self._coverage_ttl = coverage_ttl
        self._coverage: dict[str, tuple[float, bool, dict[str, bool]]] = {}  # uid -> (when, covered, adapters)
        self._lock = threading.Lock()
        self._created = int(time.time())
        self._max_context = max_context
        self._own_dht: Any = None

    @classmethod
    def from_pretrained(cls, model_path: str, initial_peers: Sequence[str] = (), *, model_name: str | None = None,
                        dht: Any = None, **client_kwargs) -> SwarmBackend:
        """Load the client parts of `model_path` and join the swarm (a client-mode DHT of its own
        unless `dht` is given)."""
        own_dht = None
        if dht is None:
            own_dht = dht = start_client_dht(initial_peers, [model_uid(model_path, model_name)])
        try:
            model = DistributedModelForCausalLM.from_pretrained(model_path, initial_peers, dht=dht,
                                                                model_name=model_name, **client_kwargs)
        except BaseException:
            if own_dht is not None:
                own_dht.shutdown()
            raise
        backend = cls(model)
        backend._own_dht = own_dht
        return backend

    @property
    def dht(self) -> Any:
        """The client's DHT (subnet views read hoster announcements through it)."""
        for m in self._models.values():
            return m.runtime.dht
        return None

    def close(self) -> None:
        for m in self._models.values():
            m.close()
        if self._own_dht is not None:
            self._own_dht.shutdown()
            self._own_dht = None

    # ---- GenerationBackend ---------------------------------------------------------------
    def _servable(self, uid: str) -> bool:
        return self._coverage_of(uid)[0]

    def _coverage_of(self, uid: str) -> tuple[bool, dict[str, bool]]:
        """Whether online hosters cover the model, and per announced adapter whether its hosters do."""
        now = time.monotonic()
        with self._lock:
            hit = self._coverage.get(uid)
            if hit and now - hit[0] < self._coverage_ttl:
                return hit[1], hit[2]
        model = self._models[uid]
        adapters: dict[str, bool] = {}
        try:
            servers = [s for s in model.runtime.run(model.manager.servers(), timeout=15) if s.state == "online"]
            n = model.config.num_hidden_layers
            ok = covers_all([(s.start, s.end) for s in servers], n)
            for name in sorted({a for s in servers for a in s.adapters}):
                adapters[name] = covers_all([(s.start, s.end) for s in servers if name in s.adapters], n)
        except Exception as e:
            log.warning("cannot read the swarm for %s: %s", uid, e)
            ok = False
        with self._lock:
            self._coverage[uid] = (now, ok, adapters)
        return ok, adapters

    def models(self) -> list[ModelCard]:
        cards = []
        for uid, m in sorted(self._models.items()):
            if self._servable(uid):
                ctx = getattr(m.config, "max_position_embeddings", None)
                if self._max_context:
                    ctx = min(ctx or self._max_context, self._max_context)
                cards.append(ModelCard(id=uid, owned_by="mesh-node swarm", created=self._created,
                                       max_context=ctx, num_blocks=m.config.num_hidden_layers))
                cards += [ModelCard(id=f"{uid}:{name}", owned_by="mesh-node swarm", created=self._created,
                                    max_context=ctx, num_blocks=m.config.num_hidden_layers)
                          for name, covered in self._coverage_of(uid)[1].items() if covered]
        return cards

    def known_models(self) -> list[str]:
        """Every model this backend was built for, servable now or not (the API answers 503, not 404,
        for one of these while its hosters do not cover it)."""
        return sorted(list(self._models) + [f"{uid}:{a}" for uid in self._models for a in self._coverage_of(uid)[1]])

    def _model(self, model: str):
        return self._resolve(model)[0]

    def _resolve(self, model: str) -> tuple[Any, str | None]:
        """`<uid>` or `<uid>:<adapter>` -> (client model, adapter or None); 404 naming what is unknown."""
        uid, sep, adapter = model.partition(":")
        m = self._models.get(uid)
        if m is None:
            raise BackendError(f"The model `{uid}` does not exist", status=404, code="model_not_found")
        if sep and adapter not in self._coverage_of(uid)[1]:
            raise BackendError(f"The model `{model}` does not exist: no hoster of `{uid}` announces the adapter "
                               f"`{adapter}`", status=404, code="model_not_found")
        return m, (adapter if sep else None)

    def tokenizer(self, model: str) -> Any:
        m = self._model(model)
        if m.tokenizer is None:
            raise BackendError(f"model `{model}` has no tokenizer", status=400, code="no_tokenizer")
        return m.tokenizer

    async def stream_batch(self, model: str, prompt_ids: Sequence[int], params: GenerationParams,
                           n: int) -> AsyncIterator[TokenEvent]:
        """`n` choices of one prompt in one batched remote session; events carry `index`."""
        m, adapter = self._resolve(model)
        eos = set(m.eos_token_ids()) | set(params.constraint.eos_ids if params.constraint is not None else ())
        events = m.astream(list(prompt_ids), to_sampling_params(params), rows=n, adapter=adapter)
        try:
            async for ev in events:
                if ev.finish_reason == "stop" and ev.token_id in eos:
                    yield TokenEvent(None, ev.text, "stop", index=ev.index)  # EOS is not part of the completion
                else:
                    yield TokenEvent(ev.token_id, ev.text, ev.finish_reason, ev.logprobs, index=ev.index)
        except (RouteError, SessionError) as e:
            with self._lock:
                self._coverage.pop(model.partition(":")[0], None)
            raise BackendError(f"the swarm cannot serve `{model}` right now: {e}", status=503,
                               code="swarm_unavailable") from None
        finally:
            await events.aclose()


    def embed(self, model: str, inputs: Sequence[Sequence[int]]) -> Any:
        """Embeddings through the swarm (blocking): `DistributedModelForCausalLM.embed`."""
        m, adapter = self._resolve(model)
        try:
            return m.embed(inputs, adapter=adapter)
        except (RouteError, SessionError) as e:
            with self._lock:
                self._coverage.pop(model.partition(":")[0], None)
            raise BackendError(f"the swarm cannot serve `{model}` right now: {e}", status=503,
                               code="swarm_unavailable") from None


def default_swarm_name(model_path: str, name: str | None = None) -> str:
    return model_uid(os.fspath(model_path), name)
