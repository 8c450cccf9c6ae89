"""Function calling through the official openai client and LangChain's ChatOpenAI (local backend).

The tiny model has random weights: with `tool_choice` "required" or a named function the call
is constrained, so it is always well formed; "auto" is read from the text (unit-tested on
the parser below, since a random model does not choose to call).
"""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from api_support import MODEL, live_server

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                            "unit": {"enum": ["c", "f"]}},
           "required": ["city", "unit"], "additionalProperties": False}
ADD = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                        "b": {"type": "integer", "minimum": 0, "maximum": 99}},
       "required": ["a", "b"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": WEATHER, "strict": True}},
         {"type": "function", "function": {"name": "add", "description": "Add two numbers", "parameters": ADD}}]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
CHAT = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def url(local_backend):
    from subnet.api import create_app

    app = create_app(local_backend, max_concurrent_streams=4, max_prompt_tokens=4096, max_tokens_limit=4000)
    with live_server(app) as u:
        yield u


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)


def _check_calls(calls, names=None) -> None:
    assert calls
    for c in calls:
        assert c.type == "function" and c.id.startswith("call_")
        assert names is None or c.function.name in names
        jsonschema.validate(json.loads(c.function.arguments), SCHEMAS[c.function.name])


@pytest.mark.parametrize("seed", range(6))
def test_required_tool_choice_always_makes_a_valid_call(client, seed):
    r = client.chat.completions.create(model=MODEL, messages=CHAT, tools=TOOLS, tool_choice="required",
                                       max_tokens=200, temperature=1.0, seed=seed)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    _check_calls(choice.message.tool_calls)


def test_named_tool_choice_streams_a_tool_call_delta(client):
    named = {"type": "function", "function": {"name": "add"}}
    full = client.chat.completions.create(model=MODEL, messages=CHAT, tools=TOOLS, tool_choice=named,
                                          max_tokens=200, temperature=1.0, seed=3)
    _check_calls(full.choices[0].message.tool_calls, {"add"})
    chunks = list(client.chat.completions.create(model=MODEL, messages=CHAT, tools=TOOLS, tool_choice=named,
                                                 max_tokens=200, temperature=1.0, seed=3, stream=True))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(deltas) == 1 and deltas[0].index == 0 and deltas[0].function.name == "add"
    assert deltas[0].function.arguments == full.choices[0].message.tool_calls[0].function.arguments
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_tool_round_trip_call_result_answer(client):
    first = client.chat.completions.create(model=MODEL, messages=CHAT, tools=TOOLS, max_tokens=200,
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}})
    msg = first.choices[0].message
    _check_calls(msg.tool_calls, {"get_weather"})
    turns = CHAT + [msg.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": "21 C and sunny"}]
    final = client.chat.completions.create(model=MODEL, messages=turns, tools=TOOLS, max_tokens=8)
    assert final.choices[0].finish_reason in ("stop", "length")
    assert isinstance(final.choices[0].message.content, str)
    assert final.usage.prompt_tokens > first.usage.prompt_tokens  # the call and its result were rendered


def test_truncated_forced_call_is_content_with_finish_length(client):
    r = client.chat.completions.create(model=MODEL, messages=CHAT, tools=TOOLS, tool_choice="required",
                                       max_tokens=3)
    assert r.choices[0].finish_reason == "length" and not r.choices[0].message.tool_calls
    assert r.choices[0].message.content.startswith("{")


@pytest.mark.parametrize("extra,param", [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "a": {"type": "nonsense"}}}}}]}, "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
     "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "a": {"type": "string", "pattern": "(?=x)"}}}}}]}, "tools[0].function.parameters"),
    ({"tools": [TOOLS[0], TOOLS[0]]}, "tools"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0]"),
    ({"tools": [{"type": "function", "function": {"name": "f", "colour": 1}}]}, "tools[0].function.colour"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format"),
])
def test_bad_tools_are_clear_400s_and_the_server_keeps_serving(client, extra, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4, **extra)
    assert e.value.body["param"] == param, e.value.body
    assert e.value.body["type"] == "invalid_request_error" and e.value.body["message"]
    assert client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2).choices


# ---- LangChain -------------------------------------------------------------------------------


def test_langchain_bind_tools_round_trip(url):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    class AddArgs(BaseModel):  # bounded: a random model would happily write digits forever
        a: int = Field(ge=0, le=99)
        b: int = Field(ge=0, le=99)

    @tool(args_schema=AddArgs)
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    llm = ChatOpenAI(model=MODEL, base_url=url + "/v1", api_key="unused", max_tokens=120, temperature=0,
                     max_retries=0, timeout=300)
    msgs = [HumanMessage("What is 2 + 3?")]
    ai = llm.bind_tools([add], tool_choice="add").invoke(msgs)
    assert len(ai.tool_calls) == 1 and ai.tool_calls[0]["name"] == "add"
    args = ai.tool_calls[0]["args"]
    assert isinstance(args["a"], int) and isinstance(args["b"], int)
    result = add.invoke(args)
    msgs += [ai, ToolMessage(str(result), tool_call_id=ai.tool_calls[0]["id"])]
    final = llm.bind_tools([add]).invoke(msgs)
    assert isinstance(final.content, str) and final.response_metadata["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_with_structured_output_returns_parsed_objects(url, method):
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    class City(BaseModel):
        """A city and its country."""

        name: str = Field(max_length=12)
        population: int = Field(ge=0, le=10_000_000)
        capital: bool

    llm = ChatOpenAI(model=MODEL, base_url=url + "/v1", api_key="unused", max_tokens=200, temperature=0.7,
                     seed=5, max_retries=0, timeout=300)
    out = llm.with_structured_output(City, method=method).invoke("Name a city.")
    assert isinstance(out, City)
