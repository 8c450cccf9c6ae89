"""Terminal chat with streaming: against an API URL (OpenAI SSE over httpx) or the swarm directly.

The conversation (system prompt + turns) is kept in `Conversation`; `/clear` starts a new
one, `/exit` (or end of input) quits. Ctrl-C during an answer stops that answer only.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

import httpx

HELP = "commands: /clear (new conversation), /exit (quit), /help"


class ChatError(RuntimeError):
    """The backend refused or failed a turn (the turn is dropped from the history)."""


@dataclass
class Conversation:
    system: str | None = None
    turns: list[dict[str, str]] = field(default_factory=list)

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + list(self.turns)

    def clear(self) -> None:
        self.turns.clear()


class ChatTransport(Protocol):
    def stream(self, messages: list[dict[str, str]]) -> Iterator[str]:
        """Yield text deltas of the assistant's answer; closing the iterator stops generation."""
        ...

    def close(self) -> None: ...


class HttpTransport:
    """Streams from `POST {url}/v1/chat/completions` and parses the SSE events."""

    def __init__(self, url: str, *, model: str | None = None, api_key: str | None = None, max_tokens: int = 256,
                 temperature: float = 0.7, timeout: float = 120.0):
        self.base = url.rstrip("/")
        if self.base.endswith("/v1"):
            self.base = self.base[:-3]
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.base, headers=headers, timeout=httpx.Timeout(timeout, connect=10))
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.model = model or self._first_model()

    def _error(self, r: httpx.Response) -> ChatError:
        try:
            message = r.json()["error"]["message"]
        except Exception:
            message = r.text[:200] or r.reason_phrase
        return ChatError(f"{r.status_code}: {message}")

    def _first_model(self) -> str:
        try:
            r = self.http.get("/v1/models")
        except httpx.HTTPError as e:
            raise ChatError(f"cannot reach {self.base}: {e}") from None
        if r.status_code != 200:
            raise self._error(r)
        models = r.json().get("data") or []
        if not models:
            raise ChatError(f"{self.base} serves no model right now")
        return models[0]["id"]

    def stream(self, messages: list[dict[str, str]]) -> Iterator[str]:
        body = {"model": self.model, "messages": messages, "stream": True, "max_tokens": self.max_tokens,
                "temperature": self.temperature}
        try:
            with self.http.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    r.read()
                    raise self._error(r)
                for line in r.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise ChatError(chunk["error"].get("message", "generation failed"))
                    for choice in chunk.get("choices", ()):
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            yield text
        except httpx.HTTPError as e:
            raise ChatError(f"connection to {self.base} failed: {e}") from None

    def close(self) -> None:
        self.http.close()


class SwarmTransport:
    """Generates through the swarm with the client's `DistributedModelForCausalLM`."""

    def __init__(self, model_path: str, initial_peers: list[str], *, model_name: str | None = None,
                 max_tokens: int = 256, temperature: float = 0.7):
        from subnet.api.swarm_backend import start_client_dht  # deferred: torch + hivemind; HTTP chat needs neither
        from subnet.client import DistributedModelForCausalLM  # deferred: as above
        from subnet.model.blocks import model_uid  # deferred: as above

        self.dht = start_client_dht(initial_peers, [model_uid(model_path, model_name)])
        try:
            self.model = DistributedModelForCausalLM.from_pretrained(model_path, initial_peers, dht=self.dht,
                                                                     model_name=model_name)
        except BaseException:
            self.dht.shutdown()
            raise
        self.max_tokens = max_tokens
        self.temperature = temperature

    def stream(self, messages: list[dict[str, str]]) -> Iterator[str]:
        from subnet.client import RouteError, SessionError  # deferred: as in __init__

        kwargs: dict[str, Any] = {"max_new_tokens": self.max_tokens}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature)
        else:
            kwargs["do_sample"] = False
        events = self.model.chat_stream(messages, **kwargs)
        try:
            for ev in events:
                if ev.text:
                    yield ev.text
        except (RouteError, SessionError) as e:
            raise ChatError(f"the swarm cannot serve this model right now: {e}") from None
        finally:
            close = getattr(events, "close", None)
            if close:
                close()

    def close(self) -> None:
        try:
            self.model.close()
        finally:
            self.dht.shutdown()


def repl(transport: ChatTransport, conversation: Conversation, *, stdin: TextIO = sys.stdin,
         stdout: TextIO = sys.stdout, prompt: str | None = None) -> int:
    """Read lines, stream answers; returns 0 on /exit or end of input."""
    interactive = stdin.isatty()
    prompt = prompt if prompt is not None else ("you> " if interactive else "")
    if interactive:
        print(HELP, file=stdout)
    while True:
        if prompt:
            stdout.write(prompt)
            stdout.flush()
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            stdout.write("\n")
            return 0
        if not line:
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/clear":
            conversation.clear()
            print("[conversation cleared]", file=stdout, flush=True)
            continue
        if text == "/help":
            print(HELP, file=stdout, flush=True)
            continue
        conversation.turns.append({"role": "user", "content": text})
        stdout.write("assistant> ")
        stdout.flush()
        parts: list[str] = []
        stream = transport.stream(conversation.messages())
        try:
            for delta in stream:
                parts.append(delta)
                stdout.write(delta)
                stdout.flush()
        except KeyboardInterrupt:
            stdout.write(" [stopped]")
        except ChatError as e:
            conversation.turns.pop()
            stdout.write(f"\n[error: {e}]\n")
            stdout.flush()
            continue
        finally:
            close = getattr(stream, "close", None)
            if close:
                close()
        stdout.write("\n")
        stdout.flush()
        conversation.turns.append({"role": "assistant", "content": "".join(parts)})
