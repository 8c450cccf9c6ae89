"""Every hoster option, once: name, type, default, help and validation.

`python -m hoster` and `mesh-node --hoster` both build their hoster flags with
`HosterOptions.add_arguments` and read them back with `HosterOptions.from_args`, so the two
entry points (and the TOML config, whose keys are these argparse destinations) accept the
same set with the same defaults. `Hoster.from_options` turns one into a running hoster.
Rule: `--blocks`/`--num-blocks` pick the starting range; with `--rebalance-interval` the
hoster may later move to another range of the same size when the swarm's coverage changes.

This module imports no torch or hivemind: `mesh-node` builds this parser for every command.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from typing import Any

from subnet.model.names import DTYPE_NAMES, KERNELS, QUANT_MODES
from subnet.swarm.addresses import NetworkOptions

DEFAULT_CACHE_TOKENS = 16384  # KV cache budget when neither --cache-tokens nor --cache-bytes is given


def parse_blocks(text: str) -> tuple[int, int]:
    """`a:b` -> (a, b) with 0 <= a < b."""
    try:
        a, b = (int(x) for x in text.split(":"))
    except ValueError:
        raise ValueError(f"--blocks must look like a:b (got {text!r})") from None
    if not 0 <= a < b:
        raise ValueError(f"--blocks {text}: need 0 <= a < b")
    return a, b


@dataclass
class HosterOptions:
    """How to host: field names are the argparse destinations and the TOML keys."""

    model: str | None = None
    model_name: str | None = None
    blocks: str | None = None  # "a:b"; see block_range()
    num_blocks: int | None = None
    dtype: str = "float32"
    quant: str = "none"  # weight-only quantization of the blocks' linear layers (subnet/model/quant.py)
    device: str = "cpu"
    cache_tokens: int | None = None
    cache_bytes: int | None = None
    session_timeout: float = 60.0
    announce_period: float = 15.0
    announce_ttl: float = 60.0
    gather_window: float = 0.002
    rebalance_interval: float | None = None  # None or 0: never move
    throughput: float | None = None  # None: measured at start-up
    linear_kernel: str | None = None  # subnet.model.kernels; None = MESH_LINEAR_KERNEL or onednn
    compile_decode: bool = False  # --compile: always compile the decode step, before announcing (mode "on")
    compile_mode: str | None = None  # auto|on|off (hoster.compile_auto); None: MESH_NODE_COMPILE or auto
    adapters: str | None = None  # "a,b": LoRA adapters (PEFT dirs or hub ids) sessions may pick (hoster/adapters.py)
    progress: bool = True

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *,
                      require_model: bool = False) -> None:
        """Add every hoster flag to `parser` (an ArgumentParser or an argument group)."""
        d = HosterOptions()
        a = parser.add_argument
        a("--model", required=require_model, default=None,
          help="model directory or hub id (a node's validator and API use it too)")
        a("--model-name", default=None, help="DHT name of the model (default: derived from --model)")
        a("--blocks", default=None,
          help="block range a:b to start serving (default: chosen from swarm coverage); with "
               "--rebalance-interval the hoster may later move to another range of the same size")
        a("--num-blocks", type=int, default=None, help="how many blocks to serve when --blocks is absent")
        a("--dtype", default=d.dtype, choices=DTYPE_NAMES, help="weight dtype (default %(default)s)")
        a("--quant", default=None, choices=QUANT_MODES,
          help="weight-only quantization of the served blocks (torchao): int8 (~1/4 of float32 weight bytes), "
               "nf4 (~1/7), none (default). Announced: clients and scoring compare hosters of one precision class")
        a("--device", default=d.device, help="cpu or cuda[:N] (default %(default)s)")
        a("--cache-tokens", type=int, default=None,
          help=f"KV cache budget in tokens (default {DEFAULT_CACHE_TOKENS})")
        a("--cache-bytes", type=int, default=None, help="KV cache budget in bytes (instead of --cache-tokens)")
        a("--session-timeout", type=float, default=d.session_timeout,
          help="idle seconds before a session expires (default %(default)s)")
        a("--announce-period", type=float, default=d.announce_period,
          help="seconds between announcement refreshes (default %(default)s)")
        a("--announce-ttl", type=float, default=d.announce_ttl,
          help="seconds an announcement lives in the DHT (default %(default)s)")
        a("--gather-window", type=float, default=d.gather_window,
          help="seconds to wait for more decode steps to batch while other sessions are active "
               "(default %(default)s)")
        a("--rebalance-interval", type=float, default=None,
          help="seconds between coverage checks (randomized +-50%%); the hoster moves to another range "
               "of its size, starting from --blocks if given, when that raises the swarm's weakest "
               "coverage by more than the hysteresis margin (hoster/selection.py). Default: never move")
        a("--throughput", type=float, default=None, help="announced tokens/s (default: measured at start-up)")
        a("--linear-kernel", default=None, choices=KERNELS,
          help="what multiplies the blocks' linear layers (subnet/model/kernels.py; default: "
               "MESH_LINEAR_KERNEL or onednn, best under concurrent sessions; blas is faster for one "
               "sequence at a time)")
        a("--compile", dest="compile_decode", action="store_true", default=d.compile_decode,
          help="always torch.compile one-session decode steps (hoster/compiled.py), before announcing; "
               "needs the onednn (default) or torch linear kernel (same as --compile-mode on)")
        a("--no-compile", dest="compile_mode", action="store_const", const="off", default=None,
          help="never compile: eager steps only (same as --compile-mode off)")
        a("--compile-mode", dest="compile_mode", default=None, choices=("auto", "on", "off"),
          help="auto (default; MESH_NODE_COMPILE): compile the decode step in the background after start-up, "
               "with a persistent cache, and serve it where measured faster (hoster/compile_auto.py); "
               "on: like --compile; off: like --no-compile")
        a("--adapters", default=None,
          help="comma-separated LoRA adapters in the PEFT format (directories or hub ids) to serve on the blocks; "
               "a request picks one as model \"<model>:<adapter>\" (adapter name: the directory's name, or the "
               "hub id with / -> --)")
        a("--no-progress", dest="progress", action="store_false", default=d.progress,
          help="no progress bars while loading blocks")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> HosterOptions:
        """The options in a parsed namespace (None means not given: the field's default)."""
        names = {f.name for f in fields(HosterOptions)}
        return cls(**{k: v for k, v in vars(args).items() if k in names and v is not None})

    def block_range(self) -> tuple[int | None, int | None]:
        """`--blocks` as (start, end), or (None, None) to choose from coverage; ValueError if malformed."""
        return parse_blocks(self.blocks) if self.blocks else (None, None)

    def validate(self) -> None:
        """Raise ValueError (a one-line message) for a bad value before anything loads."""
        self.block_range()
        for flag, value in (("--num-blocks", self.num_blocks), ("--cache-tokens", self.cache_tokens),
                            ("--cache-bytes", self.cache_bytes)):
            if value is not None and value < 1:
                raise ValueError(f"{flag} must be at least 1 (got {value})")
        if self.cache_tokens is not None and self.cache_bytes is not None:
            raise ValueError("give --cache-tokens or --cache-bytes, not both")
        for flag, value in (("--session-timeout", self.session_timeout), ("--announce-period", self.announce_period),
                            ("--announce-ttl", self.announce_ttl)):
            if value <= 0:
                raise ValueError(f"{flag} must be positive (got {value})")
        if self.rebalance_interval is not None and self.rebalance_interval < 0:
            raise ValueError(f"--rebalance-interval must be >= 0 (got {self.rebalance_interval})")
        if self.dtype not in DTYPE_NAMES:
            raise ValueError(f"unsupported --dtype {self.dtype!r}; choose one of {', '.join(DTYPE_NAMES)}")
        from hoster.compiled import kernel_for_compile  # deferred: imports torch
        from subnet.model.kernels import linear_kernel  # deferred: imports torch

        linear_kernel(self.linear_kernel)  # also checks MESH_LINEAR_KERNEL
        from hoster.compile_auto import buckets_enabled, compile_mode  # deferred: imports torch

        forced = compile_mode(self.compile_mode, self.compile_decode) == "on"
        buckets_enabled()  # MESH_NODE_COMPILE_BUCKETS: refused here, not in the background compile
        if forced:
            kernel_for_compile(self.linear_kernel)
        from subnet.model.adapters import parse_adapter_list  # deferred: imports torch

        if parse_adapter_list(self.adapters) and forced:
            raise ValueError("--compile does not support --adapters (adapter rows run the eager path)")
        if self.quant != "none":
            import torch  # deferred: mesh-node builds this parser without importing torch

            from subnet.model.quant import check_quant  # deferred: imports torch

            check_quant(self.quant, getattr(torch, self.dtype), self.device)  # QuantError is a ValueError

    def hoster_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `Hoster(model_path, ...)`: the fields, with --blocks as start/end."""
        start, end = self.block_range()
        kwargs = {f.name: getattr(self, f.name) for f in fields(HosterOptions) if f.name not in ("model", "blocks")}
        return {**kwargs, "start": start, "end": end}


def add_network_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *,
                          with_host_maddrs: bool = True) -> None:
    """The serving node's address and relay flags (subnet/swarm/addresses.py says what each does);
    `mesh-node --hoster/--validator` and `python -m hoster` both take them."""
    a = parser.add_argument
    if with_host_maddrs:
        a("--host-maddrs", nargs="*", default=None,
          help="libp2p listen multiaddrs (default: $MESH_NODE_HOST_MADDRS, else /ip4/0.0.0.0/tcp/0, "
               "every interface on a random port)")
    a("--announce-maddrs", nargs="*", default=None,
      help="multiaddrs other machines dial to reach this node, e.g. /ip4/203.0.113.7/tcp/31337 "
           "(default: the listen addresses)")
    a("--public-ip", default=None,
      help="announce /ip4/<this>/tcp/<port> for each fixed listen port (needs --host-maddrs .../tcp/PORT)")
    a("--relay", dest="relay", action="store_true", default=None,
      help="serve as a circuit relay for nodes behind NAT (default: on with --announce-maddrs/--public-ip)")
    a("--no-relay", dest="relay", action="store_false", default=None,
      help="no circuit relay at all (neither serve as one nor dial relayed nodes)")
    a("--use-auto-relay", action="store_true", default=None,
      help="behind NAT: reserve a slot on a relay (--relay-peers, else the initial peers) and be reached through it")
    a("--relay-peers", nargs="*", default=None, help="relays to use with --use-auto-relay (multiaddrs with /p2p/)")


def network_options(args: argparse.Namespace) -> NetworkOptions:
    """The address/relay flags of a parsed namespace, checked (ValueError: one line)."""
    names = {f.name for f in fields(NetworkOptions)}
    return NetworkOptions(**{k: v for k, v in vars(args).items() if k in names and v is not None}).checked()
