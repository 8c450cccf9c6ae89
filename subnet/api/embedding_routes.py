"""`POST /v1/embeddings` (OpenAI's shape): sentence embeddings from the model's hidden states.

Each input (a string, or token ids) runs through every block; its embedding is the mean over
positions of the final-normed last hidden state, L2-normalised (`subnet.client.embeddings`).
Strings are tokenized as completions prompts are (with the tokenizer's special tokens).
`encoding_format` "float" or "base64" (little-endian float32, what the official SDK asks for
by default). `dimensions` is refused: the vectors are the model's hidden size, and cutting
them would not give a trained lower-dimensional embedding.
"""

from __future__ import annotations

import base64
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.concurrency import run_in_threadpool

from subnet.api.backends import BackendError
from subnet.api.errors import APIError
from subnet.api.fields import check_extras, unsupported
from subnet.api.openai_routes import acquire, backend_error, find_model
from subnet.api.schemas import Text

router = APIRouter(prefix="/v1")
MAX_INPUTS = 256
MAX_TOTAL_FACTOR = 8  # all inputs of one request together: at most 8 prompts' worth of tokens

TokenIds = Annotated[list[StrictInt], Field(max_length=1 << 16)]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: Text
    input: Text | Annotated[list[Text], Field(max_length=MAX_INPUTS)] | TokenIds | \
        Annotated[list[TokenIds], Field(max_length=MAX_INPUTS)]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: StrictInt | None = None
    user: Text | None = None


def _inputs(req: EmbeddingRequest, tokenizer, max_tokens: int) -> list[list[int]]:
    raw = req.input
    if isinstance(raw, str) or (raw and all(isinstance(t, int) for t in raw)):
        raw = [raw]
    if not raw:
        raise APIError(400, "'input' must not be empty.", param="input", code="invalid_value")
    vocab = len(tokenizer)
    out = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            if not item:
                raise APIError(400, f"'input[{i}]' is an empty string: there is nothing to embed.", param="input",
                               code="invalid_value")
            if len(item) > max_tokens * 32:
                raise APIError(400, f"'input[{i}]' is longer than this server's limit of {max_tokens} tokens.",
                               param="input", code="context_length_exceeded")
            ids = list(tokenizer.encode(item, add_special_tokens=True))
        else:
            ids = list(item)
            if not ids:
                raise APIError(400, f"'input[{i}]' holds no token ids.", param="input", code="invalid_value")
            if any(t < 0 or t >= vocab for t in ids):
                raise APIError(400, f"token ids in 'input[{i}]' must lie in [0, {vocab}).", param="input",
                               code="invalid_value")
        if len(ids) > max_tokens:
            raise APIError(400, f"'input[{i}]' has {len(ids)} tokens, more than this server's limit of {max_tokens}.",
                           param="input", code="context_length_exceeded")
        out.append(ids)
    total = sum(len(ids) for ids in out)
    if total > MAX_TOTAL_FACTOR * max_tokens:
        raise APIError(400, f"The inputs have {total} tokens together, more than this server's limit of "
                            f"{MAX_TOTAL_FACTOR * max_tokens} per request.", param="input",
                       code="context_length_exceeded")
    return out


def _encode(vector: np.ndarray, fmt: str | None) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.astype(np.float32).tolist()


@router.post("/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request) -> dict:
    ctx = request.app.state.ctx
    check_extras(body.model_extra, {})
    if body.dimensions is not None:
        raise unsupported("dimensions", "embeddings have the model's hidden size; reduced dimensions are not "
                                        "supported")
    card = await find_model(ctx, body.model)
    embed = getattr(ctx.backend, "embed", None)
    if embed is None:
        raise unsupported("model", "this backend cannot compute embeddings")
    tokenizer = ctx.backend.tokenizer(card.id)
    inputs = await run_in_threadpool(_inputs, body, tokenizer, ctx.max_prompt_tokens)
    lease = acquire(ctx)
    try:
        vectors = await run_in_threadpool(embed, card.id, inputs)
    except BackendError as e:
        raise backend_error(e, ctx.retry_after) from None
    finally:
        lease.release()
    array = np.asarray(vectors.detach().cpu().float().numpy() if hasattr(vectors, "detach") else vectors)
    tokens = sum(len(ids) for ids in inputs)
    return {"object": "list", "model": card.id,
            "data": [{"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
                     for i, v in enumerate(array)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
