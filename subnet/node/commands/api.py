"""`mesh-node api`: serve the OpenAI-compatible API and the dashboard.

Against a swarm (`--initial-peers ... --model M`), or with the whole model in this
process (`--local --model M`); with `--chain URL --subnet-id N` it also serves the subnet
views (nodes, coverage, epochs, rewards) and subnet metrics.
"""

from __future__ import annotations

import argparse
import logging

from chain import connect
from subnet.logs import event
from subnet.node.checks import check_initial_peers, check_model
from subnet.node.config import resolve
from subnet.node.errors import UserError

# The app and the swarm pull in torch, hivemind and FastAPI (seconds): each is
# imported where it is used, after check_args, so a mistake in the flags ends in one line at once.

log = logging.getLogger("mesh_node.api")

DEFAULTS = {
    "host": "127.0.0.1",
    "port": 8000,
    "initial_peers": [],
    "api_keys": [],
    "max_concurrent_streams": 8,
    "max_prompt_tokens": 4096,
    "max_tokens_limit": 2048,
    "local": False,
    "dtype": "float32",
    "verify_fraction": 0.02,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Every option defaults to None so config file and environment can fill what no flag gave.
    parser.add_argument("--config", help="TOML config file (see `mesh-node config init`)")
    parser.add_argument("--model", help="model directory or hub id (the client parts are loaded locally)")
    parser.add_argument("--model-name", help="DHT name of the model (default: derived from --model)")
    parser.add_argument("--initial-peers", nargs="*", default=None, help="multiaddrs of swarm peers to join")
    parser.add_argument("--local", action="store_true", default=None,
                        help="run the whole model in this process instead of on the swarm")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--chain", help="chain URL (devnet http://..., Hypertensor ws://...) for subnet views")
    parser.add_argument("--subnet-id", type=int, help="subnet id on the chain")
    parser.add_argument("--host", help=f"listen address (default {DEFAULTS['host']})")
    parser.add_argument("--port", type=int, help=f"listen port (default {DEFAULTS['port']})")
    parser.add_argument("--api-key", dest="api_keys", action="append", default=None,
                        help="require this bearer key on /v1/* (repeatable)")
    parser.add_argument("--max-concurrent-streams", type=int, help="concurrent generations before 429")
    parser.add_argument("--max-prompt-tokens", type=int, help="largest accepted prompt")
    parser.add_argument("--max-tokens-limit", type=int, help="largest accepted max_tokens")
    parser.add_argument("--verify-fraction", type=float,
                        help="fraction of generation steps the client re-checks on a second hoster, besides the "
                             f"first step each hoster serves in a session (default {DEFAULTS['verify_fraction']}; "
                             "0 keeps only the first-step checks)")


def check_args(args: argparse.Namespace) -> None:
    """The flags' mistakes, found before any model loads or DHT starts."""
    if not args.model:
        raise UserError("give --model (a model directory or hub id)")
    if not args.local and not args.initial_peers and not args.chain:
        raise UserError("give --initial-peers (or --chain and --subnet-id) to reach the swarm "
                        "(or --local to run the model in this process)")
    check_model(args.model)
    if not args.local:
        check_initial_peers(args.initial_peers)
    if args.chain and args.subnet_id is None:
        raise UserError("--chain needs --subnet-id")
    if getattr(args, "verify_fraction", None) is not None and not 0.0 <= args.verify_fraction <= 1.0:
        raise UserError(f"--verify-fraction must be between 0 and 1, got {args.verify_fraction:g}")


def build_backend(args: argparse.Namespace):
    """The generation backend the flags ask for, and a DHT for subnet views (or None)."""
    check_args(args)
    if args.local:
        import torch

        from subnet.api.local_backend import LocalTransformersBackend  # deferred: torch (~2 s), after the checks

        return LocalTransformersBackend(args.model, name=args.model_name, dtype=getattr(torch, args.dtype)), None
    from subnet.api.swarm_backend import SwarmBackend  # deferred: torch + hivemind (~2 s), after the checks
    from subnet.swarm.chain_view import ChainRegistry  # deferred: hivemind, after the checks

    peers = list(args.initial_peers)
    if not peers:  # --chain without --initial-peers: the subnet's bootnodes and registered nodes
        from subnet.swarm.discovery import peers_from_chain  # deferred: hivemind (~2 s), after the checks

        peers = peers_from_chain(connect(args.chain), args.subnet_id)
        if not peers:
            raise UserError(f"subnet {args.subnet_id} on {args.chain} lists no usable multiaddrs; give --initial-peers")
    # with a chain, route only to hosters registered on it (the rule `mesh-node --api` nodes follow)
    registry = ChainRegistry(lambda: connect(args.chain), args.subnet_id) if args.chain else None
    backend = SwarmBackend.from_pretrained(args.model, peers, model_name=args.model_name, dtype=args.dtype,
                                           verify_fraction=args.verify_fraction, registry=registry)
    return backend, backend.dht


def build_subnet_view(args: argparse.Namespace, dht, model_ids):
    if not args.chain:
        return None
    if args.subnet_id is None:
        raise UserError("--chain needs --subnet-id")
    from subnet.api.subnet_view import ChainSubnetView  # deferred: hivemind + FastAPI, after the checks

    return ChainSubnetView(connect(args.chain), args.subnet_id, dht=dht, models=model_ids)


def serve(app, host: str, port: int) -> None:
    """Run uvicorn in the foreground until Ctrl-C / SIGTERM, then return (so the caller can
    close the swarm client and its DHT processes)."""
    import uvicorn

    class _Server(uvicorn.Server):
        # uvicorn re-raises the signal after its graceful shutdown, which would kill this
        # process before the caller's cleanup and orphan the DHT daemons: only stop instead.
        def handle_exit(self, sig, frame) -> None:
            if self.should_exit:
                self.force_exit = True
            self.should_exit = True

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
    _Server(config).run()


def run(args: argparse.Namespace) -> int:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    resolve(parser, args, command="api", defaults=DEFAULTS)
    backend, dht = build_backend(args)
    try:
        model_ids = [args.model_name] if args.model_name else None
        if model_ids is None:
            from subnet.api.local_backend import default_model_name  # deferred: torch (~2 s), as build_backend

            model_ids = [default_model_name(args.model)]
        view = build_subnet_view(args, dht, model_ids)
        from subnet.api import create_app  # deferred: FastAPI + torch (~2 s), after the checks

        app = create_app(backend, subnet_view=view, api_keys=args.api_keys,
                         max_concurrent_streams=args.max_concurrent_streams,
                         max_prompt_tokens=args.max_prompt_tokens, max_tokens_limit=args.max_tokens_limit)
        url = f"http://{args.host}:{args.port}"
        print(f"API:       {url}/v1  (OpenAI-compatible)", flush=True)
        print(f"dashboard: {url}/", flush=True)
        print(f"metrics:   {url}/metrics", flush=True)
        event(log, "api_serving", url=url, model=model_ids[0], swarm=not args.local, chain=args.chain or "")
        serve(app, args.host, args.port)
    finally:
        close = getattr(backend, "close", None)
        if close:
            close()
    return 0
