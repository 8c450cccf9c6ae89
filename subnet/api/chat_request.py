"""A chat request's prompt and output rules: messages rendered (with tools), the grammar that
constrains the output (`response_format` or a forced tool call), and how tool calls are read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from subnet.api.chat_render import render_chat
from subnet.api.errors import APIError
from subnet.api.structured import invalid, response_format_grammar
from subnet.api.tools import ToolPlan, plan_tools
from subnet.client.constraints import Grammar


@dataclass
class ChatPrep:
    prompt_ids: list[int]
    constraint: Grammar | None
    tools: ToolPlan | None


def chat_messages(req: Any) -> list[dict]:
    """The request's messages as plain dicts for rendering; checks tool turns are well formed."""
    out = []
    for i, m in enumerate(req.messages):
        if m.tool_calls and m.role != "assistant":
            raise invalid(f"messages[{i}].tool_calls", f"messages[{i}].tool_calls is only allowed on assistant "
                                                       "messages.")
        if m.role == "tool" and not m.tool_call_id:
            raise APIError(400, f"Missing required parameter: 'messages[{i}].tool_call_id'.",
                           param=f"messages[{i}].tool_call_id", code="missing_required_parameter")
        msg: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        if m.tool_calls:
            msg["tool_calls"] = [c.model_dump() for c in m.tool_calls]
        if m.role == "tool":
            msg["tool_call_id"] = m.tool_call_id
            if m.name:
                msg["name"] = m.name
        out.append(msg)
    return out


def prepare_chat(tokenizer: Any, req: Any) -> ChatPrep:
    """Blocking (templating, tokenizing, grammar compiling): run it in a worker thread."""
    messages = chat_messages(req)
    tools = plan_tools(tokenizer, req.tools, req.tool_choice, req.parallel_tool_calls)
    fmt = response_format_grammar(tokenizer, req.response_format)
    if fmt is not None and tools is not None and tools.constraint is not None:
        raise invalid("response_format", "response_format cannot be combined with tool_choice 'required' or a "
                                         "named function: the tool call's arguments are already constrained.")
    prompt_ids = render_chat(tokenizer, messages, tools.tools if tools is not None else None)
    constraint = tools.constraint if tools is not None and tools.constraint is not None else fmt
    if fmt is not None:
        tools = None  # the JSON answer is the content; no tool call can be read from it
    return ChatPrep(prompt_ids, constraint, tools)
