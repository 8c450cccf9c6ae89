"""`tool_choice: "auto"` reading and tool rendering, on their own (no model needed).

A random-weight model never decides to call a tool, so the auto-mode reader is checked here
on the text a tool-calling model writes, through the same `tool_deltas` stream the routes use.
"""

from __future__ import annotations

import json

import pytest

from subnet.api.chat_render import render_chat, template_supports_tools
from subnet.api.generation import Delta
from subnet.api.tools import ToolPlan, parse_output, tool_deltas

PARAMS = {"get_weather": {"type": "object", "properties": {"city": {"type": "string"}}}}
AUTO = ToolPlan(tools=[{"type": "function", "function": {"name": "get_weather", "parameters": PARAMS["get_weather"]}}],
                mode="auto", parameters=PARAMS)
OSLO = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


async def _run(pieces: list[str], finish: str = "stop") -> list[Delta]:
    async def source():
        for p in pieces:
            yield Delta(p)
        yield Delta("", finish)

    return [d async for d in tool_deltas(AUTO, source())]


def test_auto_reads_hermes_calls_and_keeps_text_before_them():
    content, calls = parse_output(AUTO, "Let me check." + CALL + CALL.replace("Paris", "Oslo"))
    assert content == "Let me check."
    assert [json.loads(c["function"]["arguments"])["city"] for c in calls] == ["Paris", "Oslo"]
    assert all(c["function"]["name"] == "get_weather" and c["id"].startswith("call_") for c in calls)


@pytest.mark.parametrize("text", [
    "Just text, no call.",
    '<tool_call>{"name": "unknown_fn", "arguments": {}}</tool_call>',  # not an offered function
    '<tool_call>{"name": "get_weather", "arguments": "city=Paris"}</tool_call>',  # arguments not an object
    "<tool_call>not json</tool_call>",
])
def test_auto_leaves_anything_else_as_content(text):
    assert parse_output(AUTO, text) == (text, [])


async def test_auto_stream_sends_content_until_a_call_begins():
    pieces = ["Hello", " there <tool", "_call>\n{\"name\": \"get_weather\", ", "\"arguments\": {\"city\": \"Paris\"}}",
              "\n</tool_call>"]
    out = await _run(pieces)
    assert "".join(d.text for d in out).rstrip() == "Hello there"
    assert out[-1].finish_reason == "tool_calls" and out[-1].tool_calls[0]["function"]["name"] == "get_weather"
    assert all("<" not in d.text for d in out)  # the held-back "<tool" never leaked


async def test_auto_stream_gives_back_held_text_that_was_not_a_call():
    out = await _run(["a <tool", "kit> b"])
    assert "".join(d.text for d in out) == "a <toolkit> b" and out[-1].finish_reason == "stop"


async def test_auto_stream_cut_by_length_returns_the_partial_call_as_content():
    out = await _run(["ok ", CALL[:30]], finish="length")
    assert "".join(d.text for d in out) == "ok " + CALL[:30]
    assert out[-1].finish_reason == "length" and not out[-1].tool_calls


def test_native_tool_template_gets_tools_calls_and_results(tiny_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok.chat_template = (
        "{% if tools %}<|system|>\nTOOLS {{ tools | tojson }}<|end|>\n{% endif %}"
        "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}"
        "{% for c in m.tool_calls or [] %}CALL {{ c.function.name }} {{ c.function.arguments | tojson }}{% endfor %}"
        "{% if m.role == 'tool' %} FOR {{ m.tool_call_id }}{% endif %}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    assert template_supports_tools(tok)
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": "", "tool_calls": [OSLO]},
                {"role": "tool", "content": "cold", "tool_call_id": "c1"}]
    text = tok.decode(render_chat(tok, messages, AUTO.tools))
    assert 'TOOLS [{"type": "function"' in text
    assert 'CALL get_weather {"city": "Oslo"}' in text  # arguments passed as a dict, as HF templates expect
    assert "cold FOR c1" in text


def test_fallback_without_tool_template_uses_hermes_text(tiny_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    assert not template_supports_tools(tok)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": "", "tool_calls": [OSLO]},
                {"role": "tool", "content": "cold", "tool_call_id": "c1"}]
    text = tok.decode(render_chat(tok, messages, AUTO.tools))
    assert text.startswith("<|system|>\nBe brief.\n\nYou may call") and "<tools>" in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>' in text
    assert "<|user|>\n<tool_response>\ncold\n</tool_response>" in text


async def test_auto_reads_a_bare_json_call_llama_style():
    bare = '{"name": "get_weather", "parameters": {"city": "Rome"}}'
    content, calls = parse_output(AUTO, bare)
    assert content == "" and json.loads(calls[0]["function"]["arguments"]) == {"city": "Rome"}
    out = await _run([" {\"name\": \"get_weather\", ", "\"parameters\": {\"city\": \"Rome\"}}"])
    assert "".join(d.text for d in out) == "" and out[-1].finish_reason == "tool_calls"
    plain = await _run(["{not a call} and more"])  # held back, then given back as content
    assert "".join(d.text for d in plain) == "{not a call} and more" and plain[-1].finish_reason == "stop"
    later = await _run(["Sure: ", "{\"a\": 1}"])  # JSON after text is content, streamed as it comes
    assert [d.text for d in later][:2] == ["Sure: ", "{\"a\": 1}"]
