"""Request bodies of the OpenAI-compatible routes.

Extra fields are kept (`extra="allow"`) so that `subnet.api.fields` can answer each one: a
documented OpenAI field this server does not implement is a 400 `unsupported_parameter`
naming it, anything else a 400 `unknown_parameter`; nothing is silently ignored.

Every string a client sends must be valid Unicode: JSON can carry a lone UTF-16 surrogate
(`"\\ud800"`) that no tokenizer can encode, so it is a 400 here rather than a 500 later.
Message count is capped so that a request's preparation (templating, tokenizing) stays
cheap; the total text length is capped by the prompt limit in the routes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from subnet.client.sampling import MAX_SPECULATIVE

MAX_N = 8
MAX_STOP = 4
MAX_MESSAGES = 1024


def _valid_unicode(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the text is not valid Unicode (it holds a lone UTF-16 surrogate)") from None
    return value


Text = Annotated[StrictStr, AfterValidator(_valid_unicode)]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: Text


class ToolCallFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Text
    arguments: Text


class ToolCall(BaseModel):
    """An earlier assistant turn's tool call, sent back in the conversation."""

    model_config = ConfigDict(extra="forbid")
    id: Text
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | Annotated[list[TextPart], Field(max_length=MAX_MESSAGES)] | None = None
    name: Text | None = None
    tool_calls: Annotated[list[ToolCall], Field(max_length=128)] | None = None  # assistant turns
    tool_call_id: Text | None = None  # tool turns: which call this is the result of

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


Stop = Text | Annotated[list[Text], Field(max_length=MAX_STOP)] | None


class _SamplingFields(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: Text
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: StrictInt | None = Field(default=None, ge=1, le=MAX_N)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: Stop = None
    seed: StrictInt | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    user: Text | None = None
    logit_bias: dict[str, float] | None = None  # token id (as a string) -> bias in [-100, 100]
    # vLLM's extra sampling fields (the OpenAI SDK sends them through `extra_body`)
    top_k: StrictInt | None = Field(default=None, ge=-1)  # -1 or 0: disabled
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0)
    # speculative decoding through the chain (subnet/client/speculative.py): false or 0 off, true the
    # default, k at most k draft tokens per step; unset: on for greedy and unseeded sampling
    speculative: StrictBool | Annotated[StrictInt, Field(ge=0, le=MAX_SPECULATIVE)] | None = None

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return tuple(s for s in stops if s)


class ChatCompletionRequest(_SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=20)
    # checked field by field in subnet.api.structured / subnet.api.tools (errors name the exact field)
    response_format: Any = None
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None


class CompletionRequest(_SamplingFields):
    prompt: Text | list[Text] | list[StrictInt] | list[list[StrictInt]]
    echo: bool | None = False
    suffix: Text | None = None
    logprobs: StrictInt | None = Field(default=None, ge=0, le=5)
    best_of: StrictInt | None = Field(default=None, ge=1, le=MAX_N)
