"""`DistributedModelForCausalLM`: a transformers-style causal LM whose blocks run on hosters.

The client holds embeddings, final norm and LM head (loaded alone from the checkpoint), the
tokenizer and generation config; the transformer blocks run on a chain of hosters found in
the DHT. `generate` returns `[batch, prompt + new]` like transformers; `stream`/`astream`
yield `StreamEvent`s; `stream_completion`/`complete` take a `SamplingParams` for API layers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import hivemind
import torch

from subnet.client.embeddings import embed_batches
from subnet.client.generation import ClientHead, Completion, StreamEvent, generate_events
from subnet.client.holdback import hold_gate
from subnet.client.manager import ClientConfig, SequenceManager
from subnet.client.routing import Span
from subnet.client.runtime import ClientRuntime
from subnet.client.sampling import SamplingParams
from subnet.client.session import RemoteSession
from subnet.client.speculative import speculation_wanted
from subnet.client.speculative_loop import speculative_events
from subnet.model.adapters import adapter_name
from subnet.model.blocks import load_client_parts, model_uid as make_model_uid

log = logging.getLogger(__name__)

_GEN_KEYS = ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty")


class DistributedModelForCausalLM:
    """Generate with a model whose decoder blocks are served by the swarm."""

    def __init__(self, parts, tokenizer, generation_config, runtime: ClientRuntime, manager: SequenceManager,
                 model_uid: str):
        self.config = parts.config
        self.tokenizer = tokenizer
        self.generation_config = generation_config
        self.runtime = runtime
        self.manager = manager
        self.model_uid = model_uid
        self.head = ClientHead(parts.embed_tokens, parts.norm, parts.lm_head, parts.config.vocab_size)
        self.dtype = parts.embed_tokens.weight.dtype
        self._sessions: set[RemoteSession] = set()
        self._lock = threading.Lock()
        self.drafter = None  # speculative decoding's drafts: prompt lookup unless `use_draft_model` sets one

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(
        cls,
        model_path_or_id: str | os.PathLike,
        initial_peers: Sequence[str] = (),
        *,
        dht: hivemind.DHT | None = None,
        model_name: str | None = None,
        dtype: str | torch.dtype = "float32",
        config: ClientConfig | None = None,
        linear_kernel: str | None = None,
        registry=None,
        **config_overrides,
    ) -> DistributedModelForCausalLM:
        """Load the client parts of `model_path_or_id` and join the swarm via `initial_peers` (or `dht`).

        `model_name` must match the hosters' `--model-name` when they used one. `config_overrides`
        set `ClientConfig` fields (timeouts, retries, `wait_for_coverage`, ...). `linear_kernel`
        picks what multiplies the LM head (`subnet.model.kernels`; None = MESH_LINEAR_KERNEL or the default).
        `registry` (a `subnet.swarm.chain_view.ChainRegistry`): route only to hosters registered on chain.
        """
        from dataclasses import replace

        parts = load_client_parts(model_path_or_id, dtype, linear_kernel=linear_kernel)
        tokenizer = _load_tokenizer(model_path_or_id)
        generation_config = _load_generation_config(model_path_or_id, parts.config)
        cfg = replace(config or ClientConfig(), **config_overrides)
        uid = make_model_uid(model_path_or_id, model_name)
        runtime = ClientRuntime(dht, initial_peers, model_uids=[uid])
        try:
            manager = SequenceManager(runtime, uid, parts.config.num_hidden_layers,
                                      hidden_size=parts.config.hidden_size, config=cfg, registry=registry)
        except BaseException:
            runtime.close()
            raise
        return cls(parts, tokenizer, generation_config, runtime, manager, uid)

    def close(self) -> None:
        """Close open sessions and the client's network runtime."""
        with self._lock:
            sessions = list(self._sessions)
        for s in sessions:
            s.close()
        self.runtime.close()

    def __enter__(self) -> DistributedModelForCausalLM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ sessions

    def inference_session(self, max_length: int, batch_size: int = 1, prefix_tokens: list[int] | None = None,
                          adapter: str | None = None) -> RemoteSession:
        """A session over the current best route (use as a context manager); `prefix_tokens` (the
        prompt's ids) lets it start from KV the hosters kept (`session.position` then is > 0);
        `adapter`: a LoRA adapter (its name, hub id or directory) only hosters announcing it serve."""
        return _TrackedSession(self, max_length, batch_size, prefix_tokens, adapter_name(adapter) if adapter else None)

    def active_routes(self) -> list[list[Span]]:
        """Routes of the sessions open now (for monitoring and tests)."""
        with self._lock:
            return [s.route for s in self._sessions]

    def wait_until_servable(self, timeout: float = 30.0) -> list[Span]:
        """Block until the swarm covers every block (useful right after hosters start)."""
        # this call's own wait: the shared config stays as it is for sessions routing meanwhile
        return self.runtime.run(self.manager.make_route(wait_for_coverage=timeout), timeout=timeout + 30)

    # ------------------------------------------------------------------ parameters

    def eos_token_ids(self) -> tuple[int, ...]:
        eos = getattr(self.generation_config, "eos_token_id", None)
        if eos is None and self.tokenizer is not None:
            eos = self.tokenizer.eos_token_id
        if eos is None:
            return ()
        return tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))

    def pad_token_id(self) -> int:
        pad = getattr(self.generation_config, "pad_token_id", None)
        if pad is None and self.tokenizer is not None:
            pad = self.tokenizer.pad_token_id
        if pad is None:
            ids = self.eos_token_ids()
            pad = ids[0] if ids else 0
        return int(pad)

    def sampling_params(self, prompt_len: int = 0, *, use_generation_config: bool = True, **kwargs) -> SamplingParams:
        """`SamplingParams` from transformers-style keyword arguments (unset ones from the generation config)."""
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        if "stop_strings" in kwargs:
            extra = kwargs.pop("stop_strings")
            stop = kwargs.get("stop") or []
            stop = [stop] if isinstance(stop, (str, int)) else list(stop)
            kwargs["stop"] = stop + ([extra] if isinstance(extra, str) else list(extra))
        if "max_length" in kwargs and "max_new_tokens" not in kwargs:
            kwargs["max_new_tokens"] = max(int(kwargs.pop("max_length")) - prompt_len, 0)
        kwargs.pop("max_length", None)
        gc = self.generation_config
        if use_generation_config and gc is not None:
            for key in _GEN_KEYS:
                if key not in kwargs and getattr(gc, key, None) is not None:
                    kwargs[key] = getattr(gc, key)
            if "max_new_tokens" not in kwargs:
                if getattr(gc, "max_new_tokens", None) is not None:
                    kwargs["max_new_tokens"] = gc.max_new_tokens
                else:
                    kwargs["max_new_tokens"] = max((getattr(gc, "max_length", None) or 20) - prompt_len, 0)
        if "eos_token_id" in kwargs:  # extra stop ids like transformers' eos_token_id argument
            eos = kwargs.pop("eos_token_id")
            kwargs["stop_token_ids"] = tuple(kwargs.get("stop_token_ids", ())) + tuple(
                eos if isinstance(eos, (list, tuple)) else [eos])
        if not kwargs.get("do_sample", False):
            for key in ("temperature", "top_p", "top_k"):
                kwargs.pop(key, None)  # ignored by greedy decoding, like transformers
        return SamplingParams.create(**kwargs)

    # ------------------------------------------------------------------ generation

    def _run_events(self, input_ids: torch.Tensor, params: SamplingParams, *, want_text: bool,
                    cancel: threading.Event | None = None, adapter: str | None = None) -> Iterator[list[StreamEvent]]:
        batch, prompt_len = input_ids.shape
        max_length = prompt_len + max(params.max_new_tokens, 1)
        shared = batch > 1 and bool((input_ids == input_ids[:1]).all())  # n choices: one prefill
        fed = [] if batch == 1 else None  # row 0's inputs, remembered for prefix reuse
        prefix = input_ids[0].tolist() if batch == 1 or shared else None
        loop = speculative_events if speculation_wanted(params) else generate_events
        extra = {"drafter": self.drafter} if loop is speculative_events else {}
        session = self.inference_session(max_length, batch, prefix, adapter).open()
        try:
            yield from loop(
                self.head, session.step, input_ids, params, eos_token_ids=self.eos_token_ids(),
                tokenizer=self.tokenizer, want_text=want_text,
                should_stop=cancel.is_set if cancel is not None else None, gate=hold_gate(session),
                start=session.position, shared_rows=shared, fed=fed, **extra,
            )
        finally:
            session.close(fed)

    def use_draft_model(self, path: str | os.PathLike | None) -> None:
        """Draft speculative tokens with a small local causal LM sharing this model's tokenizer (None:
        back to prompt lookup). See `subnet.client.speculative`."""
        from subnet.client.draft_model import load_drafter  # deferred: loads transformers' model classes

        self.drafter = None if path is None else load_drafter(path, self.tokenizer, self.config.vocab_size)

    def embed(self, inputs: Sequence[Sequence[int]], adapter: str | None = None) -> torch.Tensor:
        """Sentence embeddings `[len(inputs), hidden]` through the swarm: mean-pooled final-normed last
        hidden state, L2-normalised (`client/embeddings.py`); one session per equal-length group."""

        def run_blocks(hidden: torch.Tensor) -> torch.Tensor:
            with self.inference_session(hidden.shape[1], hidden.shape[0], adapter=adapter) as session:
                return session.step(hidden, 0)

        return embed_batches(inputs, self.head.embed_ids, self.head.norm, run_blocks)

    def generate(self, input_ids: torch.Tensor | Sequence[Sequence[int]] | None = None, *,
                 attention_mask: torch.Tensor | None = None, inputs: torch.Tensor | None = None,
                 adapter: str | None = None, **kwargs) -> torch.Tensor:
        """Like transformers' `generate`: returns `[batch, prompt + new]` token ids.

        Accepts `max_new_tokens`, `max_length`, `do_sample`, `temperature`, `top_p`, `top_k`,
        `repetition_penalty`, `presence_penalty`, `frequency_penalty`, `seed`, `stop` (strings
        and/or token ids), `stop_strings`, `eos_token_id`, `pad_token_id`, `min_new_tokens`,
        `speculative` (speculative decoding: False or 0 off, True or unset the default, k at most k
        drafts per step).
        Rows that finish early are padded with the pad token. Left-padded batches (with an
        `attention_mask`) run one session per row, concurrently. `adapter`: a LoRA adapter hosters
        announce (see `inference_session`).
        """
        ids = inputs if input_ids is None else input_ids
        if ids is None:
            raise ValueError("generate needs input_ids")
        ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        pad_id = kwargs.pop("pad_token_id", None)
        pad_id = self.pad_token_id() if pad_id is None else int(pad_id)
        for unused in ("use_cache", "return_dict_in_generate", "output_scores", "streamer", "generation_config"):
            kwargs.pop(unused, None)
        if attention_mask is not None and not bool(torch.as_tensor(attention_mask).all()):
            return self._generate_padded(ids, torch.as_tensor(attention_mask), pad_id, dict(kwargs, adapter=adapter))
        params = self.sampling_params(ids.shape[1], **kwargs)
        new: list[list[int]] = [[] for _ in range(ids.shape[0])]
        done = [False] * ids.shape[0]
        for events in self._run_events(ids, params, want_text=False, adapter=adapter):
            for ev in events:
                if ev.token_id is not None and not done[ev.index]:
                    new[ev.index].append(ev.token_id)
                if ev.finish_reason:
                    done[ev.index] = True
        width = max((len(r) for r in new), default=0)
        out = torch.full((ids.shape[0], ids.shape[1] + width), pad_id, dtype=torch.long)
        out[:, : ids.shape[1]] = ids
        for i, r in enumerate(new):
            out[i, ids.shape[1]: ids.shape[1] + len(r)] = torch.tensor(r, dtype=torch.long)
        return out

    def _generate_padded(self, ids: torch.Tensor, mask: torch.Tensor, pad_id: int, kwargs: dict) -> torch.Tensor:
        """Hosters have no padding mask: run each row unpadded in its own session, re-pad the results."""
        rows = [ids[i][mask[i].bool()].unsqueeze(0) for i in range(ids.shape[0])]
        with ThreadPoolExecutor(max_workers=min(8, len(rows))) as pool:
            outs = list(pool.map(lambda r: self.generate(r, pad_token_id=pad_id, **kwargs), rows))
        new = [o[0, r.shape[1]:] for o, r in zip(outs, rows)]
        width = max(len(n) for n in new)
        out = torch.full((ids.shape[0], ids.shape[1] + width), pad_id, dtype=torch.long)
        out[:, : ids.shape[1]] = ids
        for i, n in enumerate(new):
            out[i, ids.shape[1]: ids.shape[1] + len(n)] = n
        return out

    def _prompt_ids(self, prompt: str | Sequence[int] | torch.Tensor) -> torch.Tensor:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this model has no tokenizer: pass token ids")
            ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"]
        else:
            ids = torch.as_tensor(prompt, dtype=torch.long)
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        if ids.shape[0] != 1:
            raise ValueError("streaming takes one sequence")
        return ids

    def stream_completion(self, prompt_ids: str | Sequence[int] | torch.Tensor,
                          params: SamplingParams | None = None, *, cancel: threading.Event | None = None,
                          rows: int = 1, adapter: str | None = None, **kwargs) -> Iterator[StreamEvent]:
        """Stream one sequence: one `StreamEvent` per generated token; the last carries `finish_reason`.

        `params` is used as given (no generation-config defaults); keyword arguments build one otherwise.
        Closing the iterator (or setting `cancel`) ends the session. `rows > 1` samples that many
        sequences from the one prompt in one batched session (events carry `index`).
        """
        ids = self._prompt_ids(prompt_ids)
        if rows > 1:
            ids = ids.repeat(rows, 1)
        if params is None:
            params = self.sampling_params(ids.shape[1], **kwargs)
        for events in self._run_events(ids, params, want_text=True, cancel=cancel, adapter=adapter):
            yield from events

    def stream(self, prompt: str | Sequence[int] | torch.Tensor, **kwargs) -> Iterator[StreamEvent]:
        """Sync token stream with transformers-style arguments (see `generate`)."""
        return self.stream_completion(prompt, None, **kwargs)

    async def astream(self, prompt: str | Sequence[int] | torch.Tensor, params: SamplingParams | None = None,
                      **kwargs) -> AsyncIterator[StreamEvent]:
        """Async token stream: compute runs in a worker thread, the caller's loop only awaits events."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        done = object()

        def post(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the consumer's loop is gone
                cancel.set()

        def produce() -> None:
            events = self.stream_completion(prompt, params, cancel=cancel, **kwargs)
            try:
                for ev in events:
                    if cancel.is_set():
                        break
                    post(ev)
                post(done)
            except BaseException as e:  # delivered to the consumer
                post(e)
            finally:
                events.close()  # ends the session at once, also when the consumer stopped early

        worker = threading.Thread(target=produce, name="mesh-client-stream", daemon=True)
        worker.start()
        try:
            while True:
                item = await queue.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancel.set()

    def complete(self, prompt_ids: str | Sequence[int] | torch.Tensor, params: SamplingParams | None = None,
                 **kwargs) -> Completion:
        """Run a whole completion: token ids, text (stop strings removed), finish reason, usage counts."""
        ids = self._prompt_ids(prompt_ids)
        tokens: list[int] = []
        text: list[str] = []
        finish = "length"
        for ev in self.stream_completion(ids, params, **kwargs):
            if ev.token_id is not None:
                tokens.append(ev.token_id)
            text.append(ev.text)
            if ev.finish_reason:
                finish = ev.finish_reason
        return Completion(tokens, "".join(text), finish, ids.shape[1])

    # ------------------------------------------------------------------ chat

    def chat_prompt_ids(self, messages: Sequence[dict], *, add_generation_prompt: bool = True) -> list[int]:
        """Token ids of `messages` rendered with the tokenizer's chat template."""
        if self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("this model's tokenizer has no chat template")
        text = self.tokenizer.apply_chat_template(list(messages), tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def chat(self, messages: Sequence[dict], **kwargs) -> str:
        """The assistant's reply to `messages` (chat template applied), as text."""
        return self.complete(self.chat_prompt_ids(messages), None, **kwargs).text

    def chat_stream(self, messages: Sequence[dict], **kwargs) -> Iterator[StreamEvent]:
        return self.stream_completion(self.chat_prompt_ids(messages), None, **kwargs)


class _TrackedSession(RemoteSession):
    """A RemoteSession the model knows about while it is open (for `active_routes` and `close`)."""

    def __init__(self, model: DistributedModelForCausalLM, max_length: int, batch_size: int,
                 prefix_tokens: list[int] | None = None, adapter: str | None = None):
        super().__init__(model.manager, max_length, batch_size, prefix_tokens, adapter)
        self._model = model

    def open(self) -> _TrackedSession:
        with self._model._lock:
            self._model._sessions.add(self)
        try:
            super().open()
        except BaseException:
            self.close()
            raise
        return self

    def close(self, tokens: list[int] | None = None) -> None:
        super().close(tokens)
        with self._model._lock:
            self._model._sessions.discard(self)


def _load_tokenizer(path_or_id):
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path_or_id)
    except Exception as e:  # a model without tokenizer files still generates token ids
        log.warning("no tokenizer for %s: %s", path_or_id, e)
        return None


def _load_generation_config(path_or_id, config):
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(path_or_id)
    except Exception:
        return GenerationConfig.from_model_config(config)
