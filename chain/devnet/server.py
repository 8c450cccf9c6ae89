"""The devnet chain process: HTTP JSON API (FastAPI + uvicorn) and a block producer.

Reads are plain GETs. Every write is `POST /tx` with `{"body": <canonical JSON string>,
"signature": <hex>}`; the body names the call, its arguments, the signer and a nonce,
and is committed to SQLite before the response is sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Path as PathParam, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from chain.devnet import checks, codec
from chain.devnet.config import (
    DEFAULT_BLOCK_TIME,
    DEFAULT_EPOCH_LENGTH,
    MIN_EPOCH_LENGTH,
    DevnetConfig,
    check_timing,
    dev_accounts,
)
from chain.devnet.state import ChainState
from chain.devnet.tx import MAX_TX_BYTES
from chain.types import AuthError, ChainError

log = logging.getLogger("mesh_node.devnet")

# Path parameters, range-checked like the pallet's types: out of range, negative or not a number is a 400.
U32 = Annotated[int, PathParam(ge=0, le=checks.U32_MAX)]  # subnet ids, node ids, epochs
PeerId = Annotated[str, PathParam(min_length=1, max_length=128)]

_STATUS_BY_REASON = {"BadSignature": 401, "WrongChain": 401, "NonceReused": 409, "WrongSigner": 403}


def _status(err: ChainError) -> int:
    if err.reason in _STATUS_BY_REASON:
        return _STATUS_BY_REASON[err.reason]
    if isinstance(err, AuthError):
        return 401
    if err.reason.startswith("Unknown"):
        return 404
    return 400


def _error(err: ChainError) -> JSONResponse:
    message = str(err).removeprefix(f"{err.reason}: ").removeprefix(err.reason)
    return JSONResponse({"error": {"reason": err.reason, "message": message}}, status_code=_status(err))


class BlockHold:
    """Block production can be held and resumed (SIGUSR1 / SIGUSR2 to the devnet process): a test
    that restarts a node mid-epoch freezes chain time meanwhile, so a slow machine cannot make the
    node miss its window (`DevnetProcess.hold_blocks`). Reads and transactions keep being served."""

    def __init__(self) -> None:
        self.resumed = asyncio.Event()
        self.resumed.set()
        self.producing = False  # a block in production when the hold came still lands

    @property
    def held(self) -> bool:
        """Held and quiet: no block is being produced, so the chain's block number stays put."""
        return not self.resumed.is_set() and not self.producing

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # no signals on this loop
            loop.add_signal_handler(signal.SIGUSR1, self.resumed.clear)
            loop.add_signal_handler(signal.SIGUSR2, self.resumed.set)


async def _produce_blocks(state: ChainState, hold: BlockHold) -> None:
    """One block every `block_time` seconds of wall time (no catch-up bursts, none after a hold)."""
    interval = state.config.block_time
    next_at = time.monotonic() + interval
    while True:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if not hold.resumed.is_set():
            await hold.resumed.wait()
            next_at = time.monotonic() + interval
            continue
        next_at = max(next_at + interval, time.monotonic())
        hold.producing = True  # set before any await: a hold signal is handled between loop steps
        try:
            await asyncio.to_thread(state.produce_block)
        except Exception:  # keep producing; a failed block is retried next tick
            log.exception("block production failed")
        finally:
            hold.producing = False


def create_app(state: ChainState, *, produce: bool = True) -> FastAPI:
    hold = BlockHold()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        hold.install()
        task = asyncio.create_task(_produce_blocks(state, hold)) if produce else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(title="mesh-node devnet chain", lifespan=lifespan)

    @app.exception_handler(ChainError)
    async def _chain_error(request: Request, exc: ChainError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def _bad_parameter(request: Request, exc: RequestValidationError) -> JSONResponse:
        where = ", ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}" for e in exc.errors())
        return _error(ChainError("InvalidRequest", f"bad parameter ({where[:500]})"))

    @app.exception_handler(OverflowError)
    async def _overflow(request: Request, exc: OverflowError) -> JSONResponse:  # a number no check caught
        return _error(ChainError("InvalidRequest", "number out of range"))

    @app.get("/health")
    def health() -> dict:
        return {"ok": True, "block": state.block(), "chain_id": state.chain_id, "held": hold.held}

    @app.get("/chain")
    def chain_info() -> dict:
        return {"chain_id": state.chain_id, "block": state.block(), "config": state.config.to_dict()}

    @app.get("/block")
    def block() -> dict:
        return {"block": state.block()}

    @app.get("/epoch")
    def epoch() -> dict:
        return codec.epoch_info_to_json(state.epoch_info())

    @app.get("/randomness/{subnet_id}/{epoch}")
    def randomness(subnet_id: U32, epoch: U32) -> dict:
        return {"randomness": state.epoch_randomness(subnet_id, epoch).hex()}

    @app.get("/subnets")
    def subnets() -> list:
        return [codec.subnet_to_json(s) for s in state.subnets()]

    @app.get("/subnets/{subnet_id}")
    def subnet(subnet_id: U32) -> dict:
        return codec.subnet_to_json(state.subnet(subnet_id))

    @app.get("/subnets/{subnet_id}/nodes")
    def nodes(subnet_id: U32) -> list:
        return [codec.node_to_json(n) for n in state.nodes(subnet_id)]

    def _opt_node(node) -> Any:
        return None if node is None else codec.node_to_json(node)

    @app.get("/subnets/{subnet_id}/nodes/{node_id}")
    def node(subnet_id: U32, node_id: U32) -> Any:
        state.subnet(subnet_id)
        return _opt_node(state.node(subnet_id, node_id))

    @app.get("/subnets/{subnet_id}/peer/{peer_id}")
    def node_by_peer(subnet_id: U32, peer_id: PeerId) -> Any:
        state.subnet(subnet_id)
        return _opt_node(state.node_by_peer_id(subnet_id, peer_id))

    @app.get("/subnets/{subnet_id}/hotkey/{hotkey}")
    def node_by_hotkey(subnet_id: U32, hotkey: str) -> Any:
        hotkey = checks.address(hotkey, "hotkey")
        state.subnet(subnet_id)
        return _opt_node(state.node_by_hotkey(subnet_id, hotkey))

    @app.get("/subnets/{subnet_id}/elected/{epoch}")
    def elected(subnet_id: U32, epoch: U32) -> dict:
        state.subnet(subnet_id)
        return {"node_id": state.elected(subnet_id, epoch), "snapshot": state.snapshot(subnet_id, epoch)}

    @app.get("/subnets/{subnet_id}/submission/{epoch}")
    def submission(subnet_id: U32, epoch: U32) -> Any:
        state.subnet(subnet_id)
        sub = state.submission(subnet_id, epoch)
        return None if sub is None else codec.submission_to_json(sub)

    @app.get("/subnets/{subnet_id}/result/{epoch}")
    def result(subnet_id: U32, epoch: U32) -> Any:
        state.subnet(subnet_id)
        return state.epoch_result(subnet_id, epoch)

    @app.get("/subnets/{subnet_id}/stake/{hotkey}")
    def stake(subnet_id: U32, hotkey: str) -> dict:
        hotkey = checks.address(hotkey, "hotkey")
        state.subnet(subnet_id)
        return {"stake": str(state.stake(subnet_id, hotkey))}

    @app.get("/subnets/{subnet_id}/delegate/{address}")
    def delegate(subnet_id: U32, address: str) -> dict:
        address = checks.address(address, "address")
        state.subnet(subnet_id)
        return {"delegate_stake": str(state.delegate_stake(subnet_id, address)),
                "subnet_delegate_stake": str(state.delegate_stake(subnet_id))}

    @app.get("/accounts/{address}")
    def account(address: str) -> dict:
        address = checks.address(address, "address")
        return {
            "address": address,
            "balance": str(state.balance(address)),
            "nonce": state.nonce(address),
            "unbondings": state.unbondings(address),
        }

    @app.post("/tx")
    async def tx(request: Request) -> JSONResponse:
        limit = 2 * MAX_TX_BYTES + 1024  # body is JSON-escaped inside the envelope
        raw = bytearray()
        async for chunk in request.stream():  # never buffer more than the limit
            raw += chunk
            if len(raw) > limit:
                return _error(ChainError("InvalidRequest", "request too large"))
        try:
            envelope = json.loads(raw)
            body = envelope["body"].encode()
            signature = bytes.fromhex(envelope["signature"].removeprefix("0x"))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return _error(ChainError("InvalidRequest", 'expected {"body": str, "signature": hex}'))
        try:
            _check_tx_body(body)
        except ChainError as e:
            return _error(e)
        # The commit (fsync) happens inside submit, before this response is produced.
        result = await asyncio.to_thread(state.submit, body, signature)
        return JSONResponse(result)

    return app


def _check_tx_body(body: bytes) -> None:
    """What `ChainState.submit` takes on trust: parseable (not too deeply nested) and a u32 nonce.
    The call handlers range-check their own arguments (`checks.u32`/`u128`)."""
    try:
        tx = json.loads(body)
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise ChainError("InvalidRequest", "malformed transaction body") from None
    nonce = tx.get("nonce") if isinstance(tx, dict) else None
    if isinstance(nonce, int) and not isinstance(nonce, bool):
        checks.u32(nonce, "nonce")


def build_config(block_time: float, epoch_length: int, params: dict[str, Any]) -> DevnetConfig:
    """The genesis config from the CLI values; ValueError (one line) on a bad value."""
    check_timing(block_time, epoch_length)
    fields = {f.name: f for f in dataclasses.fields(DevnetConfig)}
    values: dict[str, Any] = {"block_time": block_time, "epoch_length": epoch_length}
    for key, value in params.items():
        if key not in fields:
            raise ValueError(f"unknown devnet parameter {key!r} (known: {', '.join(sorted(fields))})")
        default = getattr(DevnetConfig(), key)
        values[key] = type(default)(value) if not isinstance(value, type(default)) else value
    return DevnetConfig(**values)


def run_chain(
    db_path: str | Path,
    host: str = "127.0.0.1",
    port: int = 9944,
    block_time: float = DEFAULT_BLOCK_TIME,
    epoch_length: int = DEFAULT_EPOCH_LENGTH,
    *,
    params: dict[str, Any] | None = None,
    print_accounts: bool = False,
    log_level: str = "warning",
) -> None:
    """Open (or create) the chain at `db_path` and serve it until interrupted."""
    import uvicorn

    state = ChainState(db_path, build_config(block_time, epoch_length, params or {}))
    if state.config.epoch_length != epoch_length:
        print(f"note: {db_path} was created with epoch length {state.config.epoch_length}; keeping it", flush=True)
    if print_accounts:
        print_dev_accounts(state)
    where = f"http://{host}:{port} (block {state.block()}, chain id {state.chain_id})"
    print(f"devnet chain listening on {where}", flush=True)
    try:
        uvicorn.run(create_app(state), host=host, port=port, log_level=log_level.lower(), access_log=False)
    finally:
        state.close()


def print_dev_accounts(state: ChainState) -> None:
    print("dev accounts (well-known keys, for local use only):")
    for i, key in enumerate(dev_accounts(state.config.dev_accounts)):
        print(f"  #{i} {key.address} private key {key.private_key_hex} balance {state.balance(key.address)}")
    sys.stdout.flush()


def parse_params(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--param expects KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default="devnet-chain.db", help="SQLite database path (created at genesis)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9944)
    parser.add_argument("--block-time", type=float, default=DEFAULT_BLOCK_TIME, help="seconds between blocks")
    parser.add_argument(
        "--epoch-length", type=int, default=DEFAULT_EPOCH_LENGTH,
        help=f"blocks per epoch, at least {MIN_EPOCH_LENGTH} (fixed at genesis)",
    )  # fmt: skip
    parser.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE",
        help="other genesis parameters, e.g. node_emission=..., queue_epochs=1, unbonding_epochs=2",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="do not print the dev account keys")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chain.devnet.server")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        params = parse_params(args.param)
        build_config(args.block_time, args.epoch_length, params)  # validate before opening the database
    except (ValueError, TypeError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    run_chain(
        args.db, args.host, args.port, args.block_time, args.epoch_length,
        params=params, print_accounts=not args.quiet,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
