"""`POST /tokenize` and `POST /detokenize` in vLLM's shapes (outside `/v1`, as vLLM serves them).

`/tokenize` takes either `{"prompt", "add_special_tokens"=true}` (completions-style) or
`{"messages", "add_generation_prompt"=true, "tools"}` (chat, rendered exactly as
`/v1/chat/completions` renders it) and answers `{"count", "max_model_len", "tokens",
"token_strs"}` (`token_strs` only with `return_token_strs`). `/detokenize` takes `{"tokens"}`
and answers `{"prompt"}`. `model` may be left out when one model is served.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt
from starlette.concurrency import run_in_threadpool

from subnet.api.chat_render import render_chat
from subnet.api.chat_request import chat_messages
from subnet.api.errors import APIError
from subnet.api.fields import check_extras, unsupported
from subnet.api.openai_routes import find_model
from subnet.api.schemas import MAX_MESSAGES, ChatMessage, Text
from subnet.api.tools import plan_tools

router = APIRouter()


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: Text | None = None
    prompt: Text | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)] | None = None
    add_special_tokens: StrictBool | None = None
    add_generation_prompt: StrictBool = True
    continue_final_message: StrictBool = False
    return_token_strs: StrictBool | None = False
    tools: Any = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: Text | None = None
    tokens: Annotated[list[StrictInt], Field(max_length=1 << 20)]


async def _model(request: Request, name: str | None):
    ctx = request.app.state.ctx
    if name is None:
        cards = await run_in_threadpool(ctx.backend.models)
        if len(cards) != 1:
            raise APIError(400, "Missing required parameter: 'model' (this server serves "
                                f"{len(cards)} models).", param="model", code="missing_required_parameter")
        name = cards[0].id
    card = await find_model(ctx, name)
    return ctx, card, ctx.backend.tokenizer(card.id)


def _tokenize(req: TokenizeRequest, tokenizer: Any, limit: int) -> list[int]:
    if (req.prompt is None) == (req.messages is None):
        raise APIError(400, "Give exactly one of 'prompt' and 'messages'.", param="prompt", code="invalid_value")
    if req.prompt is not None:
        if len(req.prompt) > limit:
            raise APIError(400, f"'prompt' is longer than {limit} characters.", param="prompt",
                           code="context_length_exceeded")
        return list(tokenizer.encode(req.prompt, add_special_tokens=req.add_special_tokens is not False))
    if req.continue_final_message:
        raise unsupported("continue_final_message", "continuing the final message is not supported")
    if req.add_special_tokens:
        raise unsupported("add_special_tokens", "the chat template already places the special tokens")
    if sum(len(m.text()) for m in req.messages) > limit:
        raise APIError(400, f"'messages' are longer than {limit} characters.", param="messages",
                       code="context_length_exceeded")
    tools = plan_tools(tokenizer, req.tools, None, None) if req.tools else None
    return render_chat(tokenizer, chat_messages(req), tools.tools if tools else None,
                       add_generation_prompt=req.add_generation_prompt)


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> dict:
    check_extras(body.model_extra, {})
    ctx, card, tokenizer = await _model(request, body.model)
    ids = await run_in_threadpool(_tokenize, body, tokenizer, ctx.max_prompt_tokens * 32)
    strs = tokenizer.convert_ids_to_tokens(ids) if body.return_token_strs else None
    return {"count": len(ids), "max_model_len": card.max_context, "tokens": ids, "token_strs": strs}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> dict:
    _, _, tokenizer = await _model(request, body.model)
    vocab = len(tokenizer)
    bad = next((t for t in body.tokens if not 0 <= t < vocab), None)
    if bad is not None:
        raise APIError(400, f"Token id {bad} is not in [0, {vocab}).", param="tokens", code="invalid_value")
    return {"prompt": await run_in_threadpool(tokenizer.decode, body.tokens)}
