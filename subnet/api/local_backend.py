"""`LocalTransformersBackend`: a whole Hugging Face model in this process.

The fallback when no swarm is reachable, and the fast backend for API tests: same
sampler and detokenizer as the swarm backend, one forward step per token with a
KV cache, run on a single worker thread so concurrent streams interleave by token.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from subnet.api.backends import BackendError, BatchedBackend, GenerationParams, ModelCard, TokenEvent
from subnet.api.sampling import eos_token_ids, to_sampling_params
from subnet.client.embeddings import embed_batches
from subnet.client.sampling import Sampler
from subnet.client.streaming import IncrementalDetokenizer
from subnet.model.blocks import model_uid


def default_model_name(path_or_id: str) -> str:
    """DHT-safe model name as in docs/PROTOCOL.md (`model_uid`), used when no name is given."""
    return model_uid(path_or_id)


class LocalTransformersBackend(BatchedBackend):
    """Serves one causal LM loaded with transformers from a local directory."""

    def __init__(self, model_path: str, *, name: str | None = None, dtype: torch.dtype = torch.float32):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = name or default_model_name(model_path)
        self._tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        self.model.eval()
        config = self.model.config
        self._eos = eos_token_ids(self._tokenizer, config, self.model.generation_config)
        self._card = ModelCard(
            id=self.name,
            owned_by="local",
            created=int(os.path.getmtime(model_path)) if os.path.exists(model_path) else 0,
            max_context=getattr(config, "max_position_embeddings", None),
            num_blocks=getattr(config, "num_hidden_layers", None),
        )
        # One worker: torch calls never overlap, streams interleave token by token.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-gen")
        self._lock = threading.Lock()
        self.steps_total = 0  # forward steps run (tests and metrics read it)

    def models(self) -> list[ModelCard]:
        return [self._card]

    def tokenizer(self, model: str) -> Any:
        self._check(model)
        return self._tokenizer

    def _check(self, model: str) -> None:
        if model != self.name:
            raise BackendError(f"The model `{model}` does not exist", status=404, code="model_not_found")

    def _step(self, input_ids: torch.Tensor, cache: Any) -> torch.Tensor:
        with self._lock, torch.inference_mode():
            out = self.model(input_ids=input_ids, cache=cache, use_cache=True)
            self.steps_total += 1
            return out.logits[:, -1]

    async def stream_batch(self, model: str, prompt_ids: Sequence[int], params: GenerationParams,
                           n: int) -> AsyncIterator[TokenEvent]:
        """`n` choices of one prompt as one batch (one KV cache of n rows); events carry `index`."""
        from transformers import DynamicCache

        self._check(model)
        if not prompt_ids:
            raise BackendError("empty prompt", status=400, code="invalid_prompt")
        loop = asyncio.get_running_loop()
        cache = DynamicCache(config=self.model.config)
        input_ids = torch.tensor([list(prompt_ids)] * n, dtype=torch.long)
        sampler = Sampler(to_sampling_params(params), input_ids, self.model.config.vocab_size)
        decoders = [IncrementalDetokenizer(self._tokenizer) for _ in range(n)]
        eos = self._eos | set(params.constraint.eos_ids if params.constraint is not None else ())
        done = [False] * n
        for i in range(params.max_tokens):
            logits = await loop.run_in_executor(self._executor, self._step, input_ids, cache)
            tokens = sampler(logits, i).tolist()
            for row, token in enumerate(tokens):
                if done[row]:
                    continue
                lp = sampler.last_logprobs[row] if sampler.last_logprobs else None
                decoder = decoders[row]
                if token in eos:
                    done[row] = True
                    yield TokenEvent(None, decoder.flush(), "stop", index=row)
                    continue
                text = decoder.add(token)
                if i == params.max_tokens - 1:
                    done[row] = True
                    yield TokenEvent(token, text + decoder.flush(), "length", lp, index=row)
                    continue
                yield TokenEvent(token, text, None, lp, index=row)
            if all(done):
                return
            input_ids = torch.tensor([[t] for t in tokens], dtype=torch.long)

    def embed(self, model: str, inputs: Sequence[Sequence[int]]) -> torch.Tensor:
        """Embeddings `[len(inputs), hidden]` (blocking): transformers' `last_hidden_state` is already
        final-normed; pooled as in `subnet.client.embeddings`."""
        self._check(model)
        base = self.model.base_model
        with self._lock, torch.inference_mode():
            return embed_batches(inputs, base.get_input_embeddings(), lambda h: h,
                                 lambda h: base(inputs_embeds=h, use_cache=False).last_hidden_state)

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Block until no forward step runs or waits: a request that ended (a stop string, a client
        that went away) may still have one step in the worker thread, which cannot be interrupted."""
        self._executor.submit(lambda: None).result(timeout=timeout)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
