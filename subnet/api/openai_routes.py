"""OpenAI-compatible routes: /v1/models, /v1/chat/completions, /v1/completions.

Responses and SSE chunks follow OpenAI's wire format field for field, so the official
SDK works unmodified. Choices of `n > 1` of one prompt decode as one batch (`batching.py`) and
are streamed one after another. Chat output
may be constrained (`response_format`, forced tool calls: `chat_request`) and read for tool calls
(`tools`), which then arrive as `tool_calls` in the message or as one stream delta. A request
takes its concurrency slot before it is prepared (templated, tokenized).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from subnet.api.backends import BackendError, GenerationParams, ModelCard
from subnet.api.batching import SharedBatch
from subnet.api.chat_request import prepare_chat
from subnet.api.context import ApiContext
from subnet.api.errors import APIError
from subnet.api.fields import chat_logprobs, check_chat, check_completion
from subnet.api.generation import ChoiceStats, Delta, stream_choice
from subnet.api.limits import Lease
from subnet.api.logprobs import LogprobsFormatter
from subnet.api.schemas import ChatCompletionRequest, CompletionRequest
from subnet.api.sse import DISCONNECTED, SSEResponse, run_unless_disconnected, sse
from subnet.api.tools import ToolPlan, tool_deltas
from subnet.logs import event

log = logging.getLogger("mesh_node.api")
router = APIRouter(prefix="/v1")


def _ctx(request: Request) -> ApiContext:
    return request.app.state.ctx


@router.get("/models")
async def list_models(request: Request) -> dict:
    cards = await run_in_threadpool(_ctx(request).backend.models)
    return {"object": "list", "data": [_model_obj(c) for c in cards]}


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict:
    card = await find_model(_ctx(request), model_id)
    return _model_obj(card)


def _model_obj(card: ModelCard) -> dict:
    obj = {"id": card.id, "object": "model", "created": card.created, "owned_by": card.owned_by}
    if card.max_context is not None:
        obj["context_length"] = card.max_context
    return obj


async def find_model(ctx: ApiContext, model: str) -> ModelCard:
    cards = await run_in_threadpool(ctx.backend.models)
    for card in cards:
        if card.id == model:
            return card
    known = getattr(ctx.backend, "known_models", None)  # a swarm knows models it cannot route right now
    if known is not None and model in known():  # 503: retryable (the SDK retries it), unlike a 404
        raise APIError(503, f"The model `{model}` has no full route through the swarm right now (hosters are "
                            f"missing or unreachable). Retry after {ctx.retry_after} s.", param="model",
                       code="model_unavailable", headers={"Retry-After": str(ctx.retry_after)})
    raise APIError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")


# ---- shared request planning ---------------------------------------------------------------


@dataclass
class _Choice:
    index: int
    prompt_ids: list[int]
    params: GenerationParams
    prefix: str = ""  # text emitted before generated text (completions `echo`)
    tools: ToolPlan | None = None  # chat with tools offered: tool calls are read from the output
    batch: SharedBatch | None = None  # n > 1: this choice is row `row` of one batched generation
    row: int = 0


@dataclass
class _Plan:
    model: str
    choices: list[_Choice]
    prompt_tokens: int
    stream: bool
    include_usage: bool
    tokenizer: Any = None  # for logprobs' token texts

    def formatter(self, kind: str, choice: _Choice) -> LogprobsFormatter | None:
        if choice.params.logprobs is None:
            return None
        return LogprobsFormatter(kind, self.tokenizer, len(choice.prefix))


def _check_prompt(ctx: ApiContext, n_tokens: int, param: str) -> None:
    if n_tokens == 0:
        raise APIError(400, "The prompt is empty.", param=param, code="invalid_value")
    if n_tokens > ctx.max_prompt_tokens:
        raise APIError(400, f"The prompt has {n_tokens} tokens, more than this server's limit of "
                            f"{ctx.max_prompt_tokens} tokens.", param=param, code="context_length_exceeded")


def _max_tokens(ctx: ApiContext, card: ModelCard, requested: int | None, longest_prompt: int, param: str) -> int:
    room = None if card.max_context is None else card.max_context - longest_prompt
    if requested is not None:
        if requested > ctx.max_tokens_limit:
            raise APIError(400, f"max_tokens is too large: {requested}. This server allows at most "
                                f"{ctx.max_tokens_limit} completion tokens.", param=param, code="invalid_value")
        if room is not None and requested > room:
            raise APIError(400, f"This model's maximum context length is {card.max_context} tokens. However, you "
                                f"requested {longest_prompt + requested} tokens ({longest_prompt} in the prompt, "
                                f"{requested} for the completion).", param=param, code="context_length_exceeded")
        return requested
    limit = ctx.max_tokens_limit if room is None else min(ctx.max_tokens_limit, room)
    if limit < 1:
        raise APIError(400, f"This model's maximum context length is {card.max_context} tokens and the prompt "
                            f"already has {longest_prompt}.", param="messages", code="context_length_exceeded")
    return limit


def _base_params(req, max_tokens: int, logit_bias: tuple, logprobs: int | None) -> GenerationParams:
    return GenerationParams(
        max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else float(req.temperature),
        top_p=1.0 if req.top_p is None else float(req.top_p),
        seed=req.seed,
        stop=req.stop_list(),
        presence_penalty=float(req.presence_penalty or 0.0),
        frequency_penalty=float(req.frequency_penalty or 0.0),
        top_k=req.top_k or 0, min_p=float(req.min_p or 0.0),
        repetition_penalty=1.0 if req.repetition_penalty is None else float(req.repetition_penalty),
        logit_bias=logit_bias, logprobs=logprobs, speculative=req.speculative,
    )


def _choice_params(base: GenerationParams, i: int) -> GenerationParams:
    """Choice i of n: same settings, its own reproducible seed."""
    return base if base.seed is None or i == 0 else replace(base, seed=base.seed + i)


def _choices(ctx: ApiContext, model: str, first_index: int, ids: list[int], base: GenerationParams, n: int,
             **extra) -> list[_Choice]:
    """n choices of one prompt: one batched generation when n > 1 and the backend can batch."""
    batch = SharedBatch(ctx.backend, model, ids, base, n) if n > 1 and SharedBatch.supported(ctx.backend) else None
    return [_Choice(first_index + i, ids, _choice_params(base, i), batch=batch, row=i, **extra) for i in range(n)]


async def _close_batches(plan: _Plan) -> None:
    for batch in {id(c.batch): c.batch for c in plan.choices if c.batch is not None}.values():
        await batch.close()


async def _plan_chat(ctx: ApiContext, req: ChatCompletionRequest) -> _Plan:
    card = await find_model(ctx, req.model)
    budget_chars = ctx.max_prompt_tokens * 32  # cheap pre-check so a huge body is never tokenized
    if sum(len(m.text()) for m in req.messages) > budget_chars:
        raise APIError(400, f"The messages are longer than this server's prompt limit of "
                            f"{ctx.max_prompt_tokens} tokens.", param="messages", code="context_length_exceeded")
    tokenizer = ctx.backend.tokenizer(req.model)
    bias = check_chat(req, len(tokenizer))
    prep = await run_in_threadpool(prepare_chat, tokenizer, req)
    prompt_ids = prep.prompt_ids
    _check_prompt(ctx, len(prompt_ids), "messages")
    requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    base = replace(_base_params(req, _max_tokens(ctx, card, requested, len(prompt_ids), param), bias,
                                chat_logprobs(req)), constraint=prep.constraint)
    n = req.n or 1
    choices = _choices(ctx, req.model, 0, prompt_ids, base, n, tools=prep.tools)
    return _Plan(req.model, choices, len(prompt_ids), bool(req.stream),
                 bool(req.stream_options and req.stream_options.include_usage), tokenizer)


async def _plan_completion(ctx: ApiContext, req: CompletionRequest) -> _Plan:
    card = await find_model(ctx, req.model)
    tokenizer = ctx.backend.tokenizer(req.model)
    bias = check_completion(req, len(tokenizer))
    raw = req.prompt
    if isinstance(raw, str):
        prompts: list = [raw]
    elif raw and all(isinstance(p, int) for p in raw):
        prompts = [raw]
    else:
        prompts = list(raw)
    if not prompts or len(prompts) > 16:
        raise APIError(400, "prompt must hold between 1 and 16 prompts.", param="prompt", code="invalid_value")
    encoded: list[tuple[list[int], str]] = []
    for p in prompts:
        if isinstance(p, str):
            if len(p) > ctx.max_prompt_tokens * 32:
                raise APIError(400, f"The prompt is longer than this server's limit of {ctx.max_prompt_tokens} "
                                    "tokens.", param="prompt", code="context_length_exceeded")
            ids = await run_in_threadpool(lambda t=p: list(tokenizer.encode(t, add_special_tokens=True)))
            encoded.append((ids, p))
        else:
            ids = [int(t) for t in p]
            vocab = len(tokenizer)
            if any(t < 0 or t >= vocab for t in ids):
                raise APIError(400, f"prompt token ids must lie in [0, {vocab}).", param="prompt",
                               code="invalid_value")
            encoded.append((ids, tokenizer.decode(ids) if req.echo else ""))
    for ids, _ in encoded:
        _check_prompt(ctx, len(ids), "prompt")
    longest = max(len(ids) for ids, _ in encoded)
    base = _base_params(req, _max_tokens(ctx, card, req.max_tokens if req.max_tokens is not None else 16,
                                         longest, "max_tokens"), bias, req.logprobs)
    n = req.n or 1
    choices = [c for pi, (ids, text) in enumerate(encoded)
               for c in _choices(ctx, req.model, pi * n, ids, base, n, prefix=text if req.echo else "")]
    return _Plan(req.model, choices, sum(len(ids) for ids, _ in encoded), bool(req.stream),
                 bool(req.stream_options and req.stream_options.include_usage), tokenizer)


# ---- running a plan ----------------------------------------------------------------------


def acquire(ctx: ApiContext) -> Lease:
    lease = ctx.limiter.try_acquire()
    if lease is None:
        ctx.metrics.rejected.labels("concurrency").inc()
        raise APIError(429, f"This server is at its limit of {ctx.limiter.limit} concurrent generations. "
                            f"Retry after {ctx.retry_after} s.", code="rate_limit_exceeded",
                       headers={"Retry-After": str(ctx.retry_after)})
    return lease


def backend_error(e: BackendError, retry_after: int = 1) -> APIError:
    headers = {"Retry-After": str(retry_after)} if e.status == 503 else None  # retryable: tell when
    return APIError(e.status, str(e), code=e.code, headers=headers)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _open(ctx: ApiContext, plan: _Plan, choice: _Choice, stats: ChoiceStats) -> AsyncIterator[Delta]:
    backend = choice.batch.row(choice.row) if choice.batch is not None else ctx.backend
    it = stream_choice(backend, plan.model, choice.prompt_ids, choice.params, ctx.metrics, stats)
    return tool_deltas(choice.tools, it) if choice.tools is not None else it


async def _collect(ctx: ApiContext, plan: _Plan, kind: str) -> list[tuple]:
    results = []
    try:
        for choice in plan.choices:
            stats = ChoiceStats()
            parts = [choice.prefix]
            finish = "stop"
            lps: list = []
            calls = None
            async for d in _open(ctx, plan, choice, stats):
                parts.append(d.text)
                lps += d.logprobs
                calls = d.tool_calls or calls
                if d.finish_reason:
                    finish = d.finish_reason
            fmt = plan.formatter(kind, choice)
            results.append((choice, "".join(parts), finish, stats.completion_tokens, fmt and fmt.format(lps), calls))
    finally:
        await _close_batches(plan)
    return results


async def _stream_events(ctx: ApiContext, plan: _Plan, first: tuple[AsyncIterator[Delta], Delta, ChoiceStats],
                         make_chunk, lease: Lease, state: dict, kind: str) -> AsyncIterator[str]:
    """SSE body: per choice, its deltas; then the usage chunk (if asked) and [DONE]."""
    total_completion = 0
    try:
        for i, choice in enumerate(plan.choices):
            if i == 0:
                it, pending, stats = first
            else:
                stats = ChoiceStats()
                it = _open(ctx, plan, choice, stats)
                pending = None
            fmt = plan.formatter(kind, choice)
            yield sse(make_chunk(choice.index, None, None, start=True, prefix=choice.prefix))
            try:
                while True:
                    if pending is None:
                        try:
                            pending = await it.__anext__()
                        except StopAsyncIteration:
                            break
                    d, pending = pending, None
                    if d.text or (fmt and d.logprobs):
                        yield sse(make_chunk(choice.index, d.text, None, logprobs=fmt and fmt.format(d.logprobs)))
                    if d.tool_calls:
                        yield sse(make_chunk(choice.index, None, None, tool_calls=d.tool_calls))
                    if d.finish_reason:
                        yield sse(make_chunk(choice.index, None, d.finish_reason))
            finally:
                await it.aclose()
            total_completion += stats.completion_tokens
        if plan.include_usage:
            yield sse(make_chunk(None, None, None, usage=_usage(plan.prompt_tokens, total_completion)))
        yield sse("[DONE]")
        state["done"] = True
    except BackendError as e:
        state["errored"] = True
        yield sse(backend_error(e).body())
    finally:
        lease.release()
        await _close_batches(plan)


async def _run(request: Request, plan: _Plan, kind: str, lease: Lease) -> JSONResponse | StreamingResponse:
    ctx = _ctx(request)
    rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    ctx.metrics.prompt_tokens.labels(plan.model).inc(plan.prompt_tokens)
    event(log, "generation_started", id=rid, model=plan.model, prompt_tokens=plan.prompt_tokens,
          choices=len(plan.choices), stream=plan.stream, max_tokens=plan.choices[0].params.max_tokens)
    if not plan.stream:
        try:
            results = await run_unless_disconnected(request, _collect(ctx, plan, kind))
        except BackendError as e:
            raise backend_error(e, ctx.retry_after) from None
        finally:
            lease.release()
        if results is DISCONNECTED:
            ctx.metrics.cancelled.inc()
            event(log, "generation_cancelled", id=rid)
            return Response(status_code=499)  # nobody is listening; nginx's "client closed request"
        completion = sum(r[3] for r in results)
        body = {
            "id": rid, "object": "chat.completion" if kind == "chat" else "text_completion", "created": created,
            "model": plan.model, "system_fingerprint": ctx.fingerprint,
            "choices": [_final_choice(kind, c.index, text, finish, lp, calls)
                        for c, text, finish, _, lp, calls in results],
            "usage": _usage(plan.prompt_tokens, completion),
        }
        event(log, "generation_finished", id=rid, completion_tokens=completion)
        return JSONResponse(body)

    # Streaming: start the first choice before answering, so a backend that cannot serve
    # answers with a proper HTTP status instead of a 200 that carries an error.
    stats = ChoiceStats()
    first_choice = plan.choices[0]
    it = _open(ctx, plan, first_choice, stats)
    try:
        first = await it.__anext__()
    except BackendError as e:
        await it.aclose()
        lease.release()
        await _close_batches(plan)
        raise backend_error(e, ctx.retry_after) from None
    except BaseException:
        await it.aclose()
        lease.release()
        await _close_batches(plan)
        raise

    def make_chunk(index, text, finish, *, start=False, prefix="", usage=None, logprobs=None, tool_calls=None) -> dict:
        base = {"id": rid, "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
                "created": created, "model": plan.model, "system_fingerprint": ctx.fingerprint}
        if usage is not None:
            base["choices"] = []
            base["usage"] = usage
            return base
        if kind == "chat":
            if start:
                delta = {"role": "assistant", "content": "", "refusal": None}
            elif tool_calls:
                delta = {"tool_calls": [{"index": j, **c} for j, c in enumerate(tool_calls)]}
            elif finish:
                delta = {}
            else:
                delta = {"content": text}
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        else:
            choice = {"index": index, "text": prefix if start else (text or ""), "logprobs": logprobs,
                      "finish_reason": finish}
        base["choices"] = [choice]
        if plan.include_usage:
            base["usage"] = None
        return base

    state: dict = {}
    body = _stream_events(ctx, plan, (it, first, stats), make_chunk, lease, state, kind)

    async def body_with_accounting() -> AsyncIterator[str]:
        try:
            async for piece in body:
                yield piece
        finally:
            await body.aclose()

    async def cleanup() -> None:
        await it.aclose()
        lease.release()
        await _close_batches(plan)
        if state.get("done"):
            event(log, "generation_finished", id=rid)
        elif not state.get("errored"):
            ctx.metrics.cancelled.inc()
            event(log, "generation_cancelled", id=rid)

    return SSEResponse(body_with_accounting(), cleanup)


def _final_choice(kind: str, index: int, text: str, finish: str, logprobs: dict | None,
                  tool_calls: list | None = None) -> dict:
    if kind == "chat":
        message = {"role": "assistant", "content": text if text or not tool_calls else None, "refusal": None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish}
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


async def _admit_and_run(request: Request, kind: str, make_plan) -> JSONResponse | StreamingResponse:
    """Take a slot before preparing the request: templating and tokenizing cost CPU too, so
    requests over the concurrency limit get their 429 before any of that work is done."""
    ctx = _ctx(request)
    lease = acquire(ctx)
    try:
        plan = await make_plan()
    except BackendError as e:
        lease.release()
        raise backend_error(e, ctx.retry_after) from None
    except BaseException:
        lease.release()
        raise
    return await _run(request, plan, kind, lease)


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    return await _admit_and_run(request, "chat", lambda: _plan_chat(_ctx(request), body))


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request):
    return await _admit_and_run(request, "completion", lambda: _plan_completion(_ctx(request), body))
