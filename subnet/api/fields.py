"""Every request field is implemented or refused: the answer for fields the routes do not use.

The request models keep extra fields (`extra="allow"`); this module looks at each of them.
A documented OpenAI field that this server does not implement is accepted only with its
"off" value (what it means when absent: `response_format={"type": "text"}`, `store=false`,
`modalities=["text"]`, ...); any other value is a 400 with `code: "unsupported_parameter"`
and `param` naming it. A field OpenAI does not document is a 400 `unknown_parameter`. The
official SDK sends only the fields a caller passes (plus `stream`), so nothing it sends by
default is refused. Implemented fields with cross-field rules (`top_logprobs` needs
`logprobs`, `logit_bias` token ids within the vocabulary, `best_of`) are checked here too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from subnet.api.errors import APIError

Accept = Callable[[Any], bool]


def _none(v: Any) -> bool:
    return v is None


def _none_or_empty(v: Any) -> bool:
    return v is None or v == [] or v == {}


def _one_of(*values: Any) -> Accept:
    return lambda v: v is None or v in values


def _any(v: Any) -> bool:
    return True


# Documented chat fields the routes do not implement: name -> (values that mean "off", why not).
CHAT_UNSUPPORTED: dict[str, tuple[Accept, str]] = {
    "functions": (_none_or_empty, "function calling is not supported"),
    "function_call": (_one_of("none"), "function calling is not supported"),
    "modalities": (lambda v: v is None or v == ["text"], "only the text modality is supported"),
    "audio": (_none, "audio output is not supported"),
    "prediction": (_none, "predicted outputs are not supported"),
    "store": (_one_of(False), "completions are not stored by this server"),
    "metadata": (_none_or_empty, "metadata is only kept for stored completions, which this server has not"),
    "service_tier": (_one_of("auto", "default"), "this server has one service tier"),
    "reasoning_effort": (_none, "the served models are not reasoning models"),
    "verbosity": (_none, "verbosity is not supported"),
    "web_search_options": (_none, "web search is not supported"),
    "moderation": (_none, "moderation is not supported"),
    "prompt_cache_retention": (_none, "prompt cache retention is not configurable"),
    "prompt_cache_options": (_none, "prompt cache options are not configurable"),
    # identifiers and hints that change no output: accepted as given
    "safety_identifier": (_any, ""),
    "prompt_cache_key": (_any, ""),
}

COMPLETION_UNSUPPORTED: dict[str, tuple[Accept, str]] = {}

# Fields of a chat message besides role, content and name.
MESSAGE_FIELDS: dict[str, tuple[Accept, str]] = {
    "function_call": (_none, "function calling is not supported"),
    "audio": (_none, "audio is not supported"),
    "refusal": (_none, "assistant refusals cannot be replayed"),
    "annotations": (_none_or_empty, "annotations are not supported"),
}

STREAM_OPTION_FIELDS: dict[str, tuple[Accept, str]] = {
    "include_obfuscation": (_one_of(False), "stream obfuscation is not supported"),
}


def unsupported(param: str, why: str) -> APIError:
    return APIError(400, f"Unsupported parameter: '{param}': {why}.", param=param, code="unsupported_parameter")


def check_extras(extra: dict[str, Any] | None, table: dict[str, tuple[Accept, str]], prefix: str = "") -> None:
    for name, value in (extra or {}).items():
        param = prefix + name
        known = table.get(name)
        if known is None:
            raise APIError(400, f"Unrecognized request argument supplied: {param}", param=param,
                           code="unknown_parameter")
        accept, why = known
        if not accept(value):
            raise unsupported(param, why)


def _logit_bias(bias: dict[str, float] | None, vocab: int) -> tuple[tuple[int, float], ...]:
    out = []
    for key, value in (bias or {}).items():
        try:
            tok = int(key)
        except ValueError:
            tok = -1
        if not 0 <= tok < vocab:
            raise APIError(400, f"Invalid key in 'logit_bias': {key!r} is not a token id in [0, {vocab}).",
                           param="logit_bias", code="invalid_value")
        if not -100.0 <= value <= 100.0:
            raise APIError(400, f"Invalid value in 'logit_bias' for token {tok}: {value} is not in [-100, 100].",
                           param="logit_bias", code="invalid_value")
        out.append((tok, float(value)))
    return tuple(out)


def _stream_options(req: Any) -> None:
    if req.stream_options is not None:
        if not req.stream:
            raise APIError(400, "stream_options is only allowed when stream is true.", param="stream_options",
                           code="invalid_value")
        check_extras(req.stream_options.model_extra, STREAM_OPTION_FIELDS, "stream_options.")


def check_chat(req: Any, vocab: int) -> tuple[tuple[int, float], ...]:
    """Refuse what chat cannot honour; returns the parsed `logit_bias`."""
    check_extras(req.model_extra, CHAT_UNSUPPORTED)
    for i, m in enumerate(req.messages):
        check_extras(m.model_extra, MESSAGE_FIELDS, f"messages[{i}].")
    _stream_options(req)
    if req.top_logprobs is not None and not req.logprobs:
        raise APIError(400, "top_logprobs requires logprobs to be true.", param="top_logprobs", code="invalid_value")
    return _logit_bias(req.logit_bias, vocab)


def check_completion(req: Any, vocab: int) -> tuple[tuple[int, float], ...]:
    """Refuse what completions cannot honour; returns the parsed `logit_bias`."""
    check_extras(req.model_extra, COMPLETION_UNSUPPORTED)
    _stream_options(req)
    if req.suffix:
        raise unsupported("suffix", "insertion (suffix) is not supported")
    if req.best_of is not None and req.best_of not in (1, req.n or 1):
        raise unsupported("best_of", "best_of larger than n (server-side ranking) is not supported")
    if req.echo and req.logprobs is not None:
        raise unsupported("echo", "echo with logprobs (prompt logprobs) is not supported")
    return _logit_bias(req.logit_bias, vocab)


def chat_logprobs(req: Any) -> int | None:
    """How many alternatives the sampler reports per token (None: no logprobs)."""
    return (req.top_logprobs or 0) if req.logprobs else None
