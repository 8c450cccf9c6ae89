"""Function calling: `tools` / `tool_choice` checked, the call constrained or parsed, `tool_calls` out.

- `tool_choice: "none"` (or no tools): tools are not offered; plain text.
- `"auto"` (the default with tools): free generation; the output is scanned for Hermes-style
  `<tool_call>{"name", "arguments"}</tool_call>` blocks (what tool-aware templates such as
  Qwen's ask for, and the fallback prompt in `chat_render` asks for), or is as a whole one bare
  `{"name", "parameters"}` object (Llama 3.1's format). Text before the first block streams as
  content (an output starting with `{` is held back until it ends); a call naming an offered
  function with an object for arguments becomes a tool call, anything else stays content. Not
  constrained (as in vLLM): the model may answer in text. Other formats (Mistral's
  `[TOOL_CALLS]`, ...) are not recognised and arrive as content.
- `"required"`: the output is constrained to `{"name": <one offered function>, "arguments":
  <valid for that function's parameters schema>}`; a named function constrains it to that
  function's arguments. One call per choice (so `parallel_tool_calls` is honoured trivially).
A truncated call (max_tokens) is returned as content with finish_reason "length".
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from subnet.api.chat_render import TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from subnet.api.generation import Delta
from subnet.api.structured import check_schema, compile_schema, invalid
from subnet.client.constraints import Grammar

MAX_TOOLS = 128
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_EMPTY = {"type": "object", "properties": {}, "additionalProperties": False}
_BLOCK = re.compile(re.escape(TOOL_CALL_OPEN) + r"\s*(.*?)\s*(?:" + re.escape(TOOL_CALL_CLOSE) + r"|$)", re.S)


@dataclass
class ToolPlan:
    """What a chat request asked of tools: the offered tools and how the output is read."""

    tools: list[dict]  # OpenAI tool objects as offered to the template
    mode: str  # "auto" | "required" | "named"
    named: str | None = None
    constraint: Grammar | None = None
    parameters: dict[str, dict] = field(default_factory=dict)


def _function(i: int, tool: Any) -> dict:
    param = f"tools[{i}]"
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
        raise invalid(param, f"Invalid value for '{param}': a tool must be {{\"type\": \"function\", \"function\": "
                             "{...}}.")
    extra = set(tool) - {"type", "function"}
    if extra:
        raise invalid(f"{param}.{sorted(extra)[0]}", f"Unknown field in '{param}': {sorted(extra)[0]}.",
                      "unknown_parameter")
    fn = tool["function"]
    extra = set(fn) - {"name", "description", "parameters", "strict"}
    if extra:
        raise invalid(f"{param}.function.{sorted(extra)[0]}",
                      f"Unknown field in '{param}.function': {sorted(extra)[0]}.", "unknown_parameter")
    name = fn.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise invalid(f"{param}.function.name", f"Invalid '{param}.function.name': 1-64 characters of a-z, A-Z, "
                                                "0-9, '_' and '-'.")
    if fn.get("description") is not None and not isinstance(fn["description"], str):
        raise invalid(f"{param}.function.description", f"'{param}.function.description' must be a string.")
    if fn.get("strict") is not None and not isinstance(fn["strict"], bool):
        raise invalid(f"{param}.function.strict", f"'{param}.function.strict' must be a boolean.")
    params = fn.get("parameters")
    if params is not None:
        check_schema(params, f"{param}.function.parameters")
        if params.get("type", "object") != "object":
            raise invalid(f"{param}.function.parameters", f"Invalid schema for '{param}.function.parameters': "
                                                          "function parameters must be an object schema.",
                          "invalid_json_schema")
    return fn


def _choice(value: Any, names: list[str]) -> tuple[str, str | None]:
    if value is None:
        return "auto", None
    if value in ("none", "auto", "required"):
        return value, None
    if isinstance(value, dict) and value.get("type") == "function" and isinstance(value.get("function"), dict):
        name = value["function"].get("name")
        if name not in names:
            raise invalid("tool_choice", f"Invalid value for 'tool_choice': no tool named {name!r} was given in "
                                         f"'tools' (offered: {', '.join(names)}).")
        return "named", name
    raise invalid("tool_choice", "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or "
                                 "{\"type\": \"function\", \"function\": {\"name\": ...}}.")


def plan_tools(tokenizer: Any, tools: Any, tool_choice: Any, parallel: Any) -> ToolPlan | None:
    """Check `tools`/`tool_choice`/`parallel_tool_calls`; None when no tool may be called."""
    if parallel is not None and not isinstance(parallel, bool):
        raise invalid("parallel_tool_calls", "parallel_tool_calls must be a boolean.")
    if not tools:
        if tool_choice not in (None, "none"):
            raise invalid("tool_choice", "tool_choice is only allowed when tools are specified.")
        return None
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise invalid("tools", f"tools must be a list of at most {MAX_TOOLS} tools.")
    fns = [_function(i, t) for i, t in enumerate(tools)]
    names = [f["name"] for f in fns]
    dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if dup is not None:
        raise invalid("tools", f"Invalid value for 'tools': the function name {dup!r} is given twice.")
    mode, named = _choice(tool_choice, names)
    if mode == "none":
        return None
    parameters = {f["name"]: f.get("parameters") or _EMPTY for f in fns}
    plan = ToolPlan(tools=[{"type": "function", "function": f} for f in fns], mode=mode, named=named,
                    parameters=parameters)
    for i, f in enumerate(fns):  # every schema must compile, so a bad one is a 400 in any mode
        g = compile_schema(tokenizer, parameters[f["name"]], f"tools[{i}].function.parameters")
        if mode == "named" and f["name"] == named:
            plan.constraint = g
    if mode == "required":
        one_of = [{"type": "object", "properties": {"name": {"const": n}, "arguments": parameters[n]},
                   "required": ["name", "arguments"], "additionalProperties": False} for n in names]
        plan.constraint = compile_schema(tokenizer, {"anyOf": one_of} if len(one_of) > 1 else one_of[0], "tools")
    return plan


def _call(name: str, arguments: Any) -> dict:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return {"id": "call_" + uuid.uuid4().hex[:24], "type": "function", "function": {"name": name, "arguments": args}}


def parse_output(plan: ToolPlan, text: str) -> tuple[str, list[dict]]:
    """(content, tool calls) from a choice's whole text; unparseable calls stay in the content."""
    if plan.mode == "named":
        try:
            return ("", [_call(plan.named, text)]) if isinstance(json.loads(text), dict) else (text, [])
        except ValueError:
            return text, []
    if plan.mode == "required":
        try:
            obj = json.loads(text)
        except ValueError:
            return text, []
        if isinstance(obj, dict) and obj.get("name") in plan.parameters and isinstance(obj.get("arguments"), dict):
            return "", [_call(obj["name"], obj["arguments"])]
        return text, []
    start = text.find(TOOL_CALL_OPEN)
    if start < 0:
        return _bare_call(plan, text)
    calls = []
    for m in _BLOCK.finditer(text, start):
        try:
            obj = json.loads(m.group(1))
        except ValueError:
            return text, []
        args = obj.get("arguments", obj.get("parameters")) if isinstance(obj, dict) else None
        if not isinstance(obj, dict) or obj.get("name") not in plan.parameters or not isinstance(args, dict):
            return text, []
        calls.append(_call(obj["name"], args))
    return text[:start].rstrip(), calls


def _bare_call(plan: ToolPlan, text: str) -> tuple[str, list[dict]]:
    """A whole output that is one `{"name", "arguments" | "parameters"}` object (Llama 3.1's JSON
    tool calls) is a call; anything else is content."""
    try:
        obj = json.loads(text)
    except ValueError:
        return text, []
    args = obj.get("arguments", obj.get("parameters")) if isinstance(obj, dict) else None
    if isinstance(obj, dict) and obj.get("name") in plan.parameters and isinstance(args, dict):
        return "", [_call(obj["name"], args)]
    return text, []


def _held(pending: str) -> int:
    for k in range(min(len(TOOL_CALL_OPEN) - 1, len(pending)), 0, -1):
        if pending.endswith(TOOL_CALL_OPEN[:k]):
            return k
    return 0


async def tool_deltas(plan: ToolPlan, deltas: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    """A choice's deltas with tool calls taken out: content streams until a call may begin; the
    last delta carries `tool_calls` and finish_reason "tool_calls" when the choice made calls."""
    streaming = plan.mode == "auto"  # forced modes: the whole output is the call
    pending, call_text, lps, sent = "", "", [], False
    try:
        async for d in deltas:
            lps += d.logprobs
            if not d.finish_reason:
                if streaming:
                    pending += d.text
                    at = pending.find(TOOL_CALL_OPEN)
                    if not sent and pending.lstrip().startswith("{"):  # maybe a bare JSON call: hold it all
                        out, call_text, pending, streaming = "", pending, "", False
                    elif at >= 0:
                        out, call_text, pending, streaming = pending[:at], pending[at:], "", False
                    else:
                        cut = len(pending) - _held(pending)
                        out, pending = pending[:cut], pending[cut:]
                    if out.strip():
                        sent = True
                    if out:
                        yield Delta(out, None, lps)
                        lps = []
                else:
                    call_text += d.text
                continue
            call_text += pending + d.text if not streaming else ""
            tail = pending + d.text if streaming else ""
            content, calls = parse_output(plan, call_text) if call_text else ("", [])
            finish = "tool_calls" if calls and d.finish_reason == "stop" else d.finish_reason
            if calls and d.finish_reason != "stop":  # cut short: the calls may be incomplete
                content, calls = call_text, []
            yield Delta(tail + content, finish, lps, calls or None)
            return
    finally:
        close = getattr(deltas, "aclose", None)
        if close is not None:
            await close()
