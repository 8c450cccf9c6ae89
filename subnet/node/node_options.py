"""What `mesh-node --hoster/--validator` was asked to run, and the one-line checks of it.

Apart from subnet/node/assembly.py (torch, hivemind, the chain client: seconds to import), so the
CLI finds a mistake in the flags and says it in one line before any of that loads.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from hoster.options import HosterOptions, network_options
from subnet.node.checks import check_adapters, check_blocks, check_device, check_initial_peers, check_model
from subnet.node.errors import NodeConfigError
from subnet.swarm.addresses import NetworkOptions


@dataclass
class NodeOptions(HosterOptions):
    """The hoster options (hoster/options.py, their one home, shared with `python -m hoster`;
    `model` and `model_name` also serve the validator and the API) plus the node's own."""

    hoster: bool = False
    validator: bool = False
    api: bool = False
    initial_peers: list[str] = field(default_factory=list)
    host_maddrs: list[str] | None = None  # None: every interface (subnet.swarm.addresses)
    announce_maddrs: list[str] | None = None
    public_ip: str | None = None
    relay: bool | None = None
    use_auto_relay: bool | None = None
    relay_peers: list[str] | None = None
    node_key: str | None = None
    account_key: str | None = None
    data_dir: str | None = None  # restart state (validator journal); default: the node key's directory
    chain: str | None = None
    subnet_id: int | None = None
    api_host: str = "127.0.0.1"
    api_port: int = 0
    api_keys: list[str] = field(default_factory=list)
    metrics_port: int | None = None  # None: no separate metrics endpoint
    metrics_host: str = "127.0.0.1"
    reference: bool = True  # a validator whose --model has the weights publishes reference outputs
    spot_checks: bool = False  # validators: spot-check sessions indistinguishable from traffic
    reference_precisions: str | None = None  # validator: reference classes, comma-separated (default: --dtype)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> NodeOptions:
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in vars(args).items() if k in known and v is not None}
        return cls(**values)


def check_node_options(o: NodeOptions) -> NetworkOptions:
    """The roles' required flags and the common mistakes (subnet/node/checks.py), each a one-line
    `NodeConfigError`; returns the parsed network options."""
    if not (o.hoster or o.validator):
        raise NodeConfigError("choose a role: --hoster and/or --validator")
    if o.hoster and not o.model:
        raise NodeConfigError("--hoster needs --model (a model directory or hub id)")
    if o.validator and not (o.chain and o.subnet_id is not None and o.account_key and o.model):
        raise NodeConfigError("--validator needs --chain, --subnet-id, --account-key (hotkey) and --model")
    if o.chain and o.subnet_id is None:
        raise NodeConfigError("--chain needs --subnet-id")
    # The common mistakes, caught here in one line rather than as a traceback mid-start-up; those that
    # need no torch first (validate() imports it to check kernels), so they are reported at once.
    if o.model:
        check_model(o.model)
    check_initial_peers(o.initial_peers)
    if o.hoster:
        try:
            end = o.block_range()[1]
        except ValueError as e:
            raise NodeConfigError(str(e)) from None
        if o.blocks and o.model:
            check_blocks(o.blocks, end, o.model)
        try:
            o.validate()  # kernel (also MESH_LINEAR_KERNEL), --compile, cache sizes
        except ValueError as e:
            raise NodeConfigError(str(e)) from None
        check_device(o.device)
    if o.hoster and o.adapters and o.model:
        check_adapters(o.adapters, o.model, o.model_name)
    if o.validator and o.reference_precisions:
        from validator.class_reference import check_reference_precisions  # deferred: torch

        try:
            check_reference_precisions(o.reference_precisions, o.dtype)
        except ValueError as e:  # QuantError is a ValueError
            raise NodeConfigError(str(e)) from None
    try:
        return network_options(argparse.Namespace(**vars(o)))
    except ValueError as e:
        raise NodeConfigError(str(e)) from None
