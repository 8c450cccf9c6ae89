"""`mesh-node chat`: streaming terminal chat against an API URL (`--url`) or the swarm
(`--initial-peers ... --model M`). `/clear` starts over, `/exit` quits."""

from __future__ import annotations

import argparse

from subnet.node.chat import ChatError, Conversation, HttpTransport, SwarmTransport, repl
from subnet.node.checks import check_initial_peers, check_model
from subnet.node.config import resolve
from subnet.node.errors import UserError

DEFAULTS = {"initial_peers": [], "max_tokens": 256, "temperature": 0.7, "timeout": 120.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file (see `mesh-node config init`)")
    parser.add_argument("--url", help="API base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--api-key", help="bearer key for the API")
    parser.add_argument("--model", help="model id at the API, or model directory/hub id for the swarm")
    parser.add_argument("--model-name", help="DHT name of the model (swarm mode)")
    parser.add_argument("--initial-peers", nargs="*", default=None, help="swarm peers (instead of --url)")
    parser.add_argument("--max-tokens", type=int, help=f"answer length limit (default {DEFAULTS['max_tokens']})")
    parser.add_argument("--temperature", type=float, help="0 for greedy (default 0.7)")
    parser.add_argument("--system", help="system prompt")
    parser.add_argument("--timeout", type=float, help="seconds to wait for the API")


def run(args: argparse.Namespace) -> int:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    resolve(parser, args, command="chat", defaults=DEFAULTS)
    try:
        if args.url:
            transport = HttpTransport(args.url, model=args.model, api_key=args.api_key, max_tokens=args.max_tokens,
                                      temperature=args.temperature, timeout=args.timeout)
        elif args.initial_peers:
            if not args.model:
                raise UserError("swarm chat needs --model (the model directory or hub id)")
            check_model(args.model)
            check_initial_peers(args.initial_peers)
            transport = SwarmTransport(args.model, args.initial_peers, model_name=args.model_name,
                                       max_tokens=args.max_tokens, temperature=args.temperature)
        else:
            raise UserError("give --url (an API) or --initial-peers and --model (the swarm)")
    except ChatError as e:
        raise UserError(str(e)) from None
    try:
        return repl(transport, Conversation(system=args.system))
    finally:
        transport.close()
