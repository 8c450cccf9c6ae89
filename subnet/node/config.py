"""Configuration: a TOML file, then the environment (MESH_NODE_*), then command-line flags.

Later sources win. Keys are argparse destinations (`initial_peers`, `port`, ...; dashes
are accepted too). Top-level keys and the `[node]` table apply to every command; a
`[<command>]` table (e.g. `[api]`, `[chat]`, `[devnet]`) applies to that command and
overrides them. Environment variables are `MESH_NODE_<DEST>` (`MESH_NODE_PORT=8000`);
lists in the environment are comma or space separated.

Two ways to use it:
- `parse_args(parser, argv, command=...)`: parse and merge in one call (for `subnet.node.cli`).
- `apply_config(parser, args, argv, command=...)`: merge into an already parsed namespace.
"""

from __future__ import annotations

import argparse
import difflib
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from subnet.node.commands import HELP, add_global_arguments, load
from subnet.node.errors import ConfigError

ENV_PREFIX = "MESH_NODE_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
DEFAULT_PATH = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "mesh-node" / "config.toml"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_GLOBAL_TABLES = ("node",)


def config_path(explicit: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None) -> Path | None:
    """The config file to read: `--config`, else $MESH_NODE_CONFIG, else the default path if it exists."""
    environ = os.environ if environ is None else environ
    if explicit:
        return Path(explicit)
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    return DEFAULT_PATH if DEFAULT_PATH.is_file() else None


def load_file(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist (create one with `mesh-node config init`)") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None


def _norm(key: str) -> str:
    return key.replace("-", "_")


def all_settings() -> set[str]:
    """Every setting `mesh-node` or any of its commands accepts: what the top level and [node] may hold.

    Imports every command module (no heavy ones: they defer torch and hivemind), so it runs only
    when a shared key is unknown to the running command.
    """
    parser = argparse.ArgumentParser(add_help=False)
    add_global_arguments(parser)
    out = set(_actions(parser))
    for name in ("node", *HELP):
        try:
            module = load(name)
        except ModuleNotFoundError as e:
            if e.name == f"subnet.node.commands.{name}":  # a command left out of this build
                continue
            raise
        parser = argparse.ArgumentParser(add_help=False)
        module.add_arguments(parser)
        out |= set(_actions(parser))
    return out


def _did_you_mean(key: str, candidates: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def file_settings(
    data: Mapping[str, Any],
    command: str | None,
    known: set[str],
    *,
    source: str = "config file",
    shared: Callable[[], set[str]] = all_settings,
) -> dict[str, Any]:
    """Settings for `command` from parsed TOML: top level and [node], then [command].

    A typo must not pass silently: an unknown section, a top-level or [node] key that no
    command accepts (`shared()`, they apply to every command), or a [command] key that this
    command does not accept is an error naming the key and the closest valid one.
    """
    everywhere: set[str] | None = None

    def check_shared(key: str, where: str) -> bool:
        """Whether a shared key applies to this command; an error if it applies to none."""
        nonlocal everywhere
        if _norm(key) in known:
            return True
        everywhere = shared() if everywhere is None else everywhere
        if _norm(key) not in everywhere:
            raise ConfigError(f"{source}: unknown key {key!r} {where}{_did_you_mean(_norm(key), everywhere)}")
        return False

    sections = {*_GLOBAL_TABLES, *HELP}
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            if key not in sections:
                close = difflib.get_close_matches(key, sorted(sections), n=1)
                hint = f" (did you mean [{close[0]}]?)" if close else ""
                raise ConfigError(f"{source}: unknown section [{key}]{hint}")
        elif check_shared(key, "at the top level"):
            out[_norm(key)] = value
    for table in _GLOBAL_TABLES:
        if isinstance(data.get(table), dict):
            for key, value in data[table].items():
                if check_shared(key, f"in [{table}]"):
                    out[_norm(key)] = value
    if command and command not in _GLOBAL_TABLES and isinstance(data.get(command), dict):
        for key, value in data[command].items():
            if _norm(key) not in known:
                raise ConfigError(f"{source}: unknown key {key!r} in [{command}]{_did_you_mean(_norm(key), known)}")
            out[_norm(key)] = value
    return out


def env_settings(known: set[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    environ = os.environ if environ is None else environ
    out = {}
    for dest in known:
        name = ENV_PREFIX + dest.upper()
        if name in environ and name != CONFIG_ENV:
            out[dest] = environ[name]
    return out


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest not in ("help", argparse.SUPPRESS) and a.option_strings}


def _convert(action: argparse.Action, value: Any, source: str) -> Any:
    """Coerce a file/env value to what the flag would have produced."""
    where = f"{source} setting {action.dest!r}"
    is_flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
    if is_flag:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{where} must be true or false, not {value!r}")
    is_list = action.nargs in ("*", "+") or isinstance(action, argparse._AppendAction)
    if is_list:
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list")
        return [_scalar(action, v, where) for v in value]
    if isinstance(value, (list, dict)):
        raise ConfigError(f"{where} must be a single value")
    return _scalar(action, value, where)


def _scalar(action: argparse.Action, value: Any, where: str) -> Any:
    conv = action.type
    if conv is not None and callable(conv):
        if isinstance(value, bool):
            raise ConfigError(f"{where} has the wrong type: {value!r}")
        try:
            value = conv(value if isinstance(value, str) else str(value)) if conv in (int, float) else conv(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
            raise ConfigError(f"{where} is invalid: {value!r} ({e})") from None
    elif not isinstance(value, str):
        value = str(value)
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{where} must be one of {sorted(action.choices)}, not {value!r}")
    return value


def _explicit_dests(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """Destinations given on the command line (parse again with every default suppressed)."""
    saved = {a: a.default for a in parser._actions}
    saved_required = {a: a.required for a in parser._actions}
    try:
        for a in parser._actions:
            a.default = argparse.SUPPRESS
            a.required = False
        ns, _ = parser.parse_known_args(list(argv))
    finally:
        for a, d in saved.items():
            a.default = d
        for a, r in saved_required.items():
            a.required = r
    return set(vars(ns))


def apply_config(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    argv: Sequence[str],
    *,
    command: str | None = None,
    environ: Mapping[str, str] | None = None,
    path: str | os.PathLike | None = None,
) -> argparse.Namespace:
    """Overlay config file and environment onto `args`, except where a flag was given in `argv`."""
    actions = _actions(parser)
    known = set(actions)
    explicit = _explicit_dests(parser, argv)
    cfg_path = config_path(path or getattr(args, "config", None), environ)
    merged: dict[str, tuple[Any, str]] = {}
    if cfg_path is not None:
        for k, v in file_settings(load_file(cfg_path), command, known, source=f"config file {cfg_path}").items():
            merged[k] = (v, f"config file {cfg_path}")
    for k, v in env_settings(known, environ).items():
        merged[k] = (v, f"environment {ENV_PREFIX}{k.upper()}")
    for dest, (value, source) in merged.items():
        if dest in explicit or dest == "config":
            continue
        setattr(args, dest, _convert(actions[dest], value, source))
    return args


def parse_args(
    parser: argparse.ArgumentParser,
    argv: Sequence[str],
    *,
    command: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> argparse.Namespace:
    """`parser.parse_args(argv)` with config file and environment merged in (flags win)."""
    args = parser.parse_args(list(argv))
    return apply_config(parser, args, argv, command=command, environ=environ)


def resolve(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    *,
    command: str | None = None,
    defaults: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    path: str | os.PathLike | None = None,
) -> argparse.Namespace:
    """For parsers whose options default to None: a value that is still None was not given
    as a flag, so it takes the environment, else the file, else `defaults`.

    Works without the original argv (commands get only the parsed namespace).
    """
    actions = _actions(parser)
    known = set(actions)
    cfg_path = config_path(path or getattr(args, "config", None), environ)
    merged: dict[str, tuple[Any, str]] = {}
    if cfg_path is not None:
        for k, v in file_settings(load_file(cfg_path), command, known, source=f"config file {cfg_path}").items():
            merged[k] = (v, f"config file {cfg_path}")
    for k, v in env_settings(known, environ).items():
        merged[k] = (v, f"environment {ENV_PREFIX}{k.upper()}")
    for dest, (value, source) in merged.items():
        if dest != "config" and getattr(args, dest, None) is None:
            setattr(args, dest, _convert(actions[dest], value, source))
    for dest, value in (defaults or {}).items():
        if getattr(args, dest, None) is None:
            setattr(args, dest, value)
    return args


TEMPLATE = """\
# mesh-node configuration (TOML).
# Precedence: this file < environment (MESH_NODE_<SETTING>, e.g. MESH_NODE_PORT=8000) < flags.
# Keys are the long flag names (dashes or underscores). Top-level keys and [node] apply to
# every command; a [<command>] table applies to that command only and overrides them.

[node]
# Multiaddrs of peers to join (a bootstrap peer or any node of the swarm).
# initial_peers = ["/ip4/127.0.0.1/tcp/31337/p2p/12D3KooW..."]
# Model directory or hub id; hosters and clients must use the same model (and --model-name).
# model = "/models/my-model"
# model_name = "my-model"
# Addresses (subnet/swarm/addresses.py). A serving node listens on every interface by default;
# on a machine others reach, fix the port, open it, and announce the public address.
# host_maddrs = ["/ip4/0.0.0.0/tcp/31337"]
# announce_maddrs = ["/ip4/203.0.113.7/tcp/31337"]   # or: public_ip = "203.0.113.7"
# relay = true               # serve as a relay for NAT'd nodes (default: on with a public address)
# use_auto_relay = false     # behind NAT: be reached through a relay (relay_peers, else initial_peers)
# relay_peers = ["/ip4/203.0.113.7/tcp/31337/p2p/12D3KooW..."]
# With chain + subnet_id, initial_peers may stay empty: they come from the chain.
# Chain: a devnet URL (http://127.0.0.1:9944) or a Hypertensor websocket (ws://...).
# chain = "http://127.0.0.1:9944"
# subnet_id = 1
# Identity files written by `mesh-node keygen`.
# node_key = "node.key"
# account_key = "account.json"
# hoster = false
# validator = false
# reference = true           # validator: publish reference outputs when --model has the weights (--no-reference)
# reference_precisions = "float32,int8"  # validator: reference classes (default: dtype); quantized hosters need one
# blocks = "0:16"            # block range to serve (default: chosen from swarm coverage)
# dtype = "float32"          # float32 | bfloat16 | float16
# quant = "none"             # weight-only quantization of the blocks: none | int8 | nf4 (torchao)
# adapters = "./lora-a,org/lora-b"  # LoRA adapters (PEFT format) requests pick as "<model>:<adapter>"
# cache_tokens = 8192        # KV cache budget in tokens
# linear_kernel = "onednn"   # onednn (best under concurrent sessions) | blas (one sequence at a time) | torch
# compile_mode = "auto"      # auto: compile the decode step in the background, serve it where faster | on | off
# compile_decode = false     # true: same as compile_mode = "on" (compiled before announcing)

[api]
# host = "127.0.0.1"          # use 0.0.0.0 to listen on every interface
# port = 8000
# api_keys = ["change-me"]    # bearer keys required on /v1/* (empty: no auth)
# max_concurrent_streams = 8  # more concurrent generations get 429 + Retry-After
# max_prompt_tokens = 4096
# max_tokens_limit = 2048
# local = false               # run the whole model in this process instead of the swarm

[chat]
# url = "http://127.0.0.1:8000"   # an API to chat with (instead of --initial-peers + --model)
# api_key = "change-me"
# max_tokens = 256
# temperature = 0.7
# system = "You are a helpful assistant."

[devnet]
# hosters = 3
# validators = 1
# epochs = 0                  # >0: run that many epochs, print a summary and exit
"""


def write_template(path: str | os.PathLike, *, force: bool = False) -> Path:
    """Write the commented template; refuses to overwrite unless `force`."""
    path = Path(path)
    if path.exists() and not force:
        raise ConfigError(f"refusing to overwrite existing config file {path} (use --force)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TEMPLATE)
    return path
