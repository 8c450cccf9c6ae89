"""Chat messages (with tools, tool calls and tool results) to prompt token ids.

A chat template that knows tools (it reads the `tools` variable, as Qwen, Llama 3.1+, Mistral
and Hermes templates do) gets them the Hugging Face way: `apply_chat_template(messages,
tools=...)`, assistant turns with `tool_calls` (arguments as a dict) and `tool` turns with
`tool_call_id`. For a template without tool support (or no template at all) the fallback is
the Hermes convention in plain text, which any instruction-tuned model can follow:
the tool list goes into a system message that asks for `<tool_call>{"name": ..., "arguments":
...}</tool_call>`, earlier calls are rendered that way in the assistant's text, and tool results
become user turns wrapped in `<tool_response>...</tool_response>` (roles every template accepts).
"""

from __future__ import annotations

import json
from typing import Any

from subnet.api.errors import APIError

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
_FALLBACK_TEMPLATE_ROLES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}
_TOOLS_PREAMBLE = (
    "You may call one or more functions to help with the user's request. The functions are listed as "
    "JSON schemas inside <tools></tools>:\n<tools>\n{tools}\n</tools>\n"
    "To call a function, reply with a JSON object holding its name and arguments inside "
    "<tool_call></tool_call> tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n"
    "</tool_call>"
)


def template_supports_tools(tokenizer: Any) -> bool:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: the default one, or a dedicated tool_use one
        return "tool_use" in template or "tools" in str(template.get("default", ""))
    return isinstance(template, str) and "tools" in template


def _arguments(text: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) else text


def _native(messages: list[dict]) -> list[dict]:
    out = []
    for m in messages:
        msg: dict[str, Any] = {"role": m["role"], "content": m["content"]}
        if m.get("tool_calls"):
            msg["tool_calls"] = [{"id": c["id"], "type": "function",
                                  "function": {"name": c["function"]["name"],
                                               "arguments": _arguments(c["function"]["arguments"])}}
                                 for c in m["tool_calls"]]
        if m["role"] == "tool":
            msg["tool_call_id"] = m.get("tool_call_id") or ""
            if m.get("name"):
                msg["name"] = m["name"]
        out.append(msg)
    return out


def _fallback(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    out: list[dict] = []
    if tools:
        preamble = _TOOLS_PREAMBLE.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
        if messages and messages[0]["role"] == "system":
            out.append({"role": "system", "content": messages[0]["content"] + "\n\n" + preamble})
            messages = messages[1:]
        else:
            out.append({"role": "system", "content": preamble})
    for m in messages:
        if m["role"] == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{m['content']}\n</tool_response>"})
            continue
        content = m["content"]
        for c in m.get("tool_calls") or ():
            call = {"name": c["function"]["name"], "arguments": _arguments(c["function"]["arguments"])}
            content += f"{TOOL_CALL_OPEN}\n{json.dumps(call, ensure_ascii=False)}\n{TOOL_CALL_CLOSE}"
        out.append({"role": m["role"], "content": content})
    return out


def render_chat(tokenizer: Any, messages: list[dict], tools: list[dict] | None = None, *,
                add_generation_prompt: bool = True) -> list[int]:
    """Token ids of the conversation, ending with the assistant's generation prompt.

    `messages`: dicts with role/content (str) and, as sent, `tool_calls` / `tool_call_id` / `name`;
    `tools`: OpenAI tool objects to offer the model (None: none offered).
    """
    has_tool_turns = any(m.get("tool_calls") or m["role"] == "tool" for m in messages)
    template = getattr(tokenizer, "chat_template", None)
    if template and template_supports_tools(tokenizer):
        kwargs = {"tools": tools} if tools else {}
        text = _apply(tokenizer, _native(messages), kwargs, add_generation_prompt)
    else:
        plain = _fallback(messages, tools) if (tools or has_tool_turns) else \
            [{"role": m["role"], "content": m["content"]} for m in messages]
        if template:
            text = _apply(tokenizer, plain, {}, add_generation_prompt)
        else:
            text = "".join(f"{_FALLBACK_TEMPLATE_ROLES[m['role']]}: {m['content']}\n" for m in plain)
            text += "Assistant:" if add_generation_prompt else ""
    return list(tokenizer.encode(text, add_special_tokens=False))


def _apply(tokenizer: Any, messages: list[dict], kwargs: dict, add_generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False,
                                             **kwargs)
    except Exception as e:  # jinja2 TemplateError and friends: the template refused these messages
        raise APIError(400, f"The model's chat template cannot render these messages: {e}", param="messages",
                       code="invalid_value") from None
