"""Every documented OpenAI chat/completions request field is honoured or refused with a 400 naming it.

The field tables are checked against the installed `openai` SDK's own request types, so a
field the SDK learns later fails this test until the server decides what to do with it.
"""

from __future__ import annotations

import inspect
import typing

import openai
import pytest
from api_support import MODEL

CHAT = [{"role": "user", "content": "Hello"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture(scope="module")
def api_url(local_backend):
    """Room for the tool preamble (the tiny tokenizer spends ~4 tokens a word)."""
    from api_support import live_server

    from subnet.api import create_app

    app = create_app(local_backend, max_concurrent_streams=4, max_prompt_tokens=2048, max_tokens_limit=50000)
    with live_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(api_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=api_url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _content(r) -> str:
    if isinstance(r, openai.Stream):
        return "".join(c.choices[0].delta.content or "" for c in r if c.choices)
    return r.choices[0].message.content


def _ok(r) -> bool:
    return isinstance(_content(r), str)


# field -> (kwargs that are honoured, check of the response, kwargs that are refused or None)
CHAT_FIELDS: dict[str, tuple[dict, typing.Callable, dict | None]] = {
    "model": ({}, _ok, {"model": "no-such-model"}),
    "messages": ({}, _ok, {"messages": []}),
    "max_tokens": ({"max_tokens": 2}, lambda r: r.usage.completion_tokens <= 2, {"max_tokens": 0}),
    "max_completion_tokens": ({"max_completion_tokens": 2}, lambda r: r.usage.completion_tokens <= 2,
                              {"max_completion_tokens": 0}),
    "temperature": ({"temperature": 0.7, "seed": 1}, _ok, {"temperature": 3}),
    "top_p": ({"top_p": 0.5, "temperature": 1, "seed": 1}, _ok, {"top_p": 0}),
    "n": ({"n": 2}, lambda r: len(r.choices) == 2, {"n": 0}),
    "stream": ({"stream": True}, _ok, None),
    "stream_options": ({"stream": True, "stream_options": {"include_usage": True}}, _ok,
                       {"stream": True, "stream_options": {"include_obfuscation": True}}),
    "stop": ({"stop": ["\n"]}, lambda r: "\n" not in r.choices[0].message.content, {"stop": ["a"] * 5}),
    "seed": ({"seed": 3, "temperature": 1}, _ok, {"seed": "x"}),
    "presence_penalty": ({"presence_penalty": 1.0}, _ok, {"presence_penalty": 3}),
    "frequency_penalty": ({"frequency_penalty": 1.0}, _ok, {"frequency_penalty": -3}),
    "logit_bias": ({"logit_bias": {"5": -100}}, _ok, {"logit_bias": {"5": 101}}),
    "logprobs": ({"logprobs": True}, lambda r: len(r.choices[0].logprobs.content) == r.usage.completion_tokens,
                 {"logprobs": "yes"}),
    "top_logprobs": ({"logprobs": True, "top_logprobs": 2},
                     lambda r: all(len(t.top_logprobs) == 2 for t in r.choices[0].logprobs.content),
                     {"top_logprobs": 2}),
    "user": ({"user": "someone"}, _ok, {"user": 5}),
    "response_format": ({"response_format": {"type": "json_object"}, "max_tokens": 1},
                        lambda r: r.choices[0].message.content == "{", {"response_format": {"type": "xml"}}),
    "tools": ({"tools": [TOOL], "tool_choice": "required", "max_tokens": 60},
              lambda r: r.choices[0].message.tool_calls[0].function.name == "f",
              {"tools": [{"type": "function", "function": {"name": "no spaces allowed"}}]}),
    "tool_choice": ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "f"}}, "max_tokens": 60},
                    lambda r: r.choices[0].finish_reason == "tool_calls", {"tool_choice": "auto"}),  # no tools
    "parallel_tool_calls": ({"tools": [TOOL], "tool_choice": "required", "parallel_tool_calls": False,
                             "max_tokens": 60}, lambda r: len(r.choices[0].message.tool_calls) == 1,
                            {"parallel_tool_calls": "yes"}),
    "functions": ({"functions": []}, _ok, {"functions": [TOOL["function"]]}),
    "function_call": ({"function_call": "none"}, _ok, {"function_call": "auto"}),
    "modalities": ({"modalities": ["text"]}, _ok, {"modalities": ["text", "audio"]}),
    "audio": ({}, _ok, {"audio": {"voice": "alloy", "format": "wav"}}),
    "prediction": ({}, _ok, {"prediction": {"type": "content", "content": "x"}}),
    "store": ({"store": False}, _ok, {"store": True}),
    "metadata": ({"metadata": {}}, _ok, {"metadata": {"k": "v"}}),
    "service_tier": ({"service_tier": "auto"}, _ok, {"service_tier": "flex"}),
    "reasoning_effort": ({}, _ok, {"reasoning_effort": "low"}),
    "verbosity": ({}, _ok, {"verbosity": "low"}),
    "web_search_options": ({}, _ok, {"web_search_options": {}}),
    "moderation": ({}, _ok, {"moderation": {"model": "x"}}),
    "prompt_cache_key": ({"prompt_cache_key": "k"}, _ok, None),
    "prompt_cache_retention": ({}, _ok, {"prompt_cache_retention": "24h"}),
    "prompt_cache_options": ({}, _ok, {"prompt_cache_options": {"x": 1}}),
    "safety_identifier": ({"safety_identifier": "s"}, _ok, None),
}

COMPLETION_FIELDS: dict[str, tuple[dict, typing.Callable, dict | None]] = {
    "model": ({}, lambda r: r.choices[0].text is not None, {"model": "no-such-model"}),
    "prompt": ({"prompt": [1, 2, 3]}, lambda r: r.usage.prompt_tokens == 3, {"prompt": []}),
    "max_tokens": ({"max_tokens": 2}, lambda r: r.usage.completion_tokens <= 2, {"max_tokens": 0}),
    "temperature": ({"temperature": 0.5}, lambda r: True, {"temperature": -1}),
    "top_p": ({"top_p": 0.5}, lambda r: True, {"top_p": 1.5}),
    "n": ({"n": 2}, lambda r: len(r.choices) == 2, {"n": 99}),
    "stream": ({"stream": True}, lambda r: len(list(r)) > 0, None),
    "stream_options": ({"stream": True, "stream_options": {"include_usage": True}},
                       lambda r: list(r)[-1].usage is not None, {"stream_options": {"include_usage": True}}),
    "stop": ({"stop": "\n"}, lambda r: "\n" not in r.choices[0].text, {"stop": 5}),
    "seed": ({"seed": 1}, lambda r: True, {"seed": 1.5}),
    "presence_penalty": ({"presence_penalty": 0.5}, lambda r: True, {"presence_penalty": 9}),
    "frequency_penalty": ({"frequency_penalty": 0.5}, lambda r: True, {"frequency_penalty": 9}),
    "logit_bias": ({"logit_bias": {"5": 5}}, lambda r: True, {"logit_bias": {"-1": 5}}),
    "logprobs": ({"logprobs": 2}, lambda r: len(r.choices[0].logprobs.tokens) == r.usage.completion_tokens,
                 {"logprobs": 6}),
    "echo": ({"echo": True}, lambda r: r.choices[0].text.startswith("Hello"), {"echo": True, "logprobs": 1}),
    "suffix": ({"suffix": ""}, lambda r: True, {"suffix": "tail"}),
    "best_of": ({"best_of": 1}, lambda r: True, {"best_of": 3}),
    "user": ({"user": "u"}, lambda r: True, {"user": ["u"]}),
}


def _sdk_fields(module) -> set[str]:
    return set(typing.get_type_hints(module.CompletionCreateParamsBase))


def test_tables_cover_every_documented_field():
    from openai.types import completion_create_params
    from openai.types.chat import completion_create_params as chat_params

    assert _sdk_fields(chat_params) <= set(CHAT_FIELDS)
    assert _sdk_fields(completion_create_params) <= set(COMPLETION_FIELDS)


def _call(create, base: dict, extra: dict):
    known = set(inspect.signature(create).parameters)
    kwargs = {**base, **{k: v for k, v in extra.items() if k in known}}
    body = {k: v for k, v in extra.items() if k not in known}
    return create(**kwargs, extra_body=body or None)


def _expect_400_naming(create, base: dict, bad: dict, field: str) -> None:
    with pytest.raises(openai.APIStatusError) as e:
        _call(create, base, bad)
    assert e.value.status_code in (400, 404), (field, e.value.status_code)
    err = e.value.body if isinstance(e.value.body, dict) else {}
    param = err.get("param") or ""
    assert param.split(".")[0].split("[")[0] == field, (field, err)


@pytest.mark.parametrize("field", sorted(CHAT_FIELDS))
def test_chat_field_is_honoured_or_refused(client, field):
    good, check, bad = CHAT_FIELDS[field]
    base = {"model": MODEL, "messages": CHAT, "max_tokens": 6, "temperature": 0}
    r = _call(client.chat.completions.create, base, good)
    assert check(r), field
    if bad is not None:
        _expect_400_naming(client.chat.completions.create, base, bad, field)


@pytest.mark.parametrize("field", sorted(COMPLETION_FIELDS))
def test_completion_field_is_honoured_or_refused(client, field):
    good, check, bad = COMPLETION_FIELDS[field]
    base = {"model": MODEL, "prompt": "Hello", "max_tokens": 6, "temperature": 0}
    r = _call(client.completions.create, base, good)
    assert check(r), field
    if bad is not None:
        _expect_400_naming(client.completions.create, base, bad, field)


def test_refusals_have_openai_shape_and_codes(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=CHAT, audio={"voice": "alloy", "format": "wav"})
    assert e.value.body["param"] == "audio" and e.value.body["code"] == "unsupported_parameter"
    assert e.value.body["type"] == "invalid_request_error" and "audio" in e.value.body["message"]
    for create, base in ((client.chat.completions.create, {"messages": CHAT}),
                         (client.completions.create, {"prompt": "Hi"})):
        with pytest.raises(openai.BadRequestError) as e:
            create(model=MODEL, **base, extra_body={"no_such_field": 1})
        assert e.value.body["param"] == "no_such_field" and e.value.body["code"] == "unknown_parameter"


def test_message_fields_refused_or_accepted(client):
    ok = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello", "refusal": None,
                                               "tool_calls": None}]
    assert client.chat.completions.create(model=MODEL, messages=ok, max_tokens=2).choices
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None, "tool_calls": [call]},
             {"role": "tool", "tool_call_id": "c", "content": "42"}]
    assert client.chat.completions.create(model=MODEL, messages=turns, max_tokens=2).choices
    bad = [{"role": "user", "content": "x", "tool_calls": [call]}]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=bad, max_tokens=2)
    assert e.value.body["param"] == "messages[0].tool_calls"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "tool", "content": "42"}], max_tokens=2)
    assert e.value.body["param"] == "messages[0].tool_call_id"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x", "colour": 1}])
    assert e.value.body["param"] == "messages[0].colour" and e.value.body["code"] == "unknown_parameter"


def test_sdk_defaults_are_never_refused(client):
    """What the SDK sends with no options (model, messages/prompt, and stream) is accepted."""
    assert client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2).choices
    assert list(client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2, stream=True))
    assert client.completions.create(model=MODEL, prompt="Hi", max_tokens=2).choices
