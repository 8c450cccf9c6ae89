"""Compose `Network` pallet calls from the live runtime metadata, and read their outcome.

Call signatures differ between Hypertensor runtime versions, so arguments (and fields of
struct arguments) are filled by name from what the node knows, optional ones default to
None, and a required argument the node cannot supply fails loudly naming the call and
the argument.
"""

from __future__ import annotations

from typing import Any

from scalecodec.types import BTreeMap
from substrateinterface import SubstrateInterface

from chain.hypertensor.connection import PALLET
from chain.types import ChainError, error_for
from keys import AccountKey

# Pallet error names -> the chain reason codes of chain.types.
REASONS = {
    "InvalidValidator": "NotElected",
    "NoElectedValidator": "NotElected",
    "SubnetRewardsAlreadySubmitted": "AlreadyProposed",
    "AlreadyAttested": "AlreadyAttested",
    "MinStakeNotReached": "StakeOutOfRange",
    "MaxStakeReached": "StakeOutOfRange",
    "NotEnoughStakeToWithdraw": "InsufficientStake",
    "NotEnoughBalanceToStake": "InsufficientBalance",
    "NotEnoughBalance": "InsufficientBalance",
    "NotEnoughBalanceToRegisterSubnet": "InsufficientBalance",
    "InvalidSubnetId": "UnknownSubnet",
    "InvalidSubnetNodeId": "UnknownNode",
    "InvalidHotkeySubnetNodeId": "UnknownNode",
    "PeerIdExist": "PeerIdTaken",
    "NotKeyOwner": "WrongSigner",
    "NotSubnetOwner": "WrongSigner",
    "ColdkeyMatchesHotkey": "HotkeyIsColdkey",
    "HotkeyHasOwner": "HotkeyTaken",
    "HotkeyAlreadyRegisteredToColdkey": "HotkeyTaken",
    "InvalidPeerId": "InvalidPeerId",
}


def compose_args(call: str, param_info: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Fill a call's arguments by name from `values` (see the module docstring).

    `param_info` is substrate-interface's decomposition of the call's parameters: a
    struct is a dict of fields, an Option is `(None, inner)`.
    """

    def fill(name: str, info: Any, path: str) -> Any:
        if name in values:
            return values[name]
        if isinstance(info, (list, tuple)) and len(info) == 2 and info[0] is None:
            return None  # Option<...>: not supplied -> None
        if isinstance(info, dict) and not _is_enum(info):
            return {field: fill(field, sub, f"{path}.{field}") for field, sub in info.items()}
        raise error_for(
            "MissingArgument",
            f"runtime call {PALLET}.{call} requires argument {path!r} ({info}) which this node cannot supply",
        )

    return {name: fill(name, info, name) for name, info in param_info.items()}


def _is_enum(info: dict) -> bool:
    # substrate-interface decomposes enums with unit variants as lists, structs as dicts of
    # field -> type; an enum with data variants is a dict whose values may be None.
    return any(v is None for v in info.values())


def fix_btreemaps(substrate: SubstrateInterface) -> None:
    """Teach scalecodec 1.2 to encode the runtime's BTreeMap types.

    scale_info BTreeMaps are registered as a composite over `Vec<(K, V)>` without a
    `sub_type`, so encoding any map argument crashes. Set it from the inner tuple type;
    values are then passed as lists of (key, value) pairs.
    """
    rc = substrate.runtime_config
    try:
        types = substrate.metadata.portable_registry.value["types"]
    except (AttributeError, KeyError, TypeError):
        return
    for entry in types:
        if entry.get("type", {}).get("path") != ["BTreeMap"]:
            continue
        cls = rc.get_decoder_class(f"scale_info::{entry['id']}")
        if not (isinstance(cls, type) and issubclass(cls, BTreeMap)) or cls.__dict__.get("sub_type"):
            continue
        try:
            vec = rc.get_decoder_class(cls.type_mapping[0])
            key, value = rc.get_decoder_class(vec.sub_type).type_mapping
        except (AttributeError, TypeError, ValueError, IndexError):
            continue
        cls.sub_type = f"{key}, {value}"  # Map.__init__ derives map_key/map_value from it


def btree(entries: list[tuple[bytes, Any, Any]]) -> list[tuple[Any, Any]]:
    """(sort key, key, value) triples -> a BTreeMap argument: unique keys in byte order.

    Rust orders `[u8; 20]` and `Vec<u8>` keys lexicographically by their raw bytes, which
    is the order the runtime re-encodes the map in.
    """
    seen: dict[bytes, tuple[Any, Any]] = {}
    for sort_key, key, value in entries:
        seen.setdefault(sort_key, (key, value))
    return [seen[k] for k in sorted(seen)]


def is_map_argument(s: SubstrateInterface, call: str, path: tuple[str, ...]) -> bool:
    """Whether argument `path` of `Network.<call>` is a BTreeMap in this runtime (else a set or a list)."""
    s.init_runtime()
    fix_btreemaps(s)
    fn = s.get_metadata_call_function(PALLET, call)
    info: Any = fn.get_param_info() if fn is not None else {}
    for name in path:
        info = info.get(name) if isinstance(info, dict) else None
    if not isinstance(info, str):
        return False
    cls = s.runtime_config.get_decoder_class(info)
    return isinstance(cls, type) and issubclass(cls, BTreeMap)


def signed_call(s: SubstrateInterface, key: AccountKey, call: str, values: dict[str, Any]) -> Any:
    """The signed extrinsic `Network.<call>` with arguments composed from `values`."""
    s.init_runtime()
    fix_btreemaps(s)
    fn = s.get_metadata_call_function(PALLET, call)
    if fn is None:
        raise error_for("UnsupportedCall", f"this runtime has no call {PALLET}.{call}")
    params = compose_args(call, fn.get_param_info(), values)
    composed = s.compose_call(call_module=PALLET, call_function=call, call_params=params)
    return s.create_signed_extrinsic(call=composed, keypair=key.keypair)


def failure(receipt: Any, call: str) -> ChainError | None:
    """The typed error of a failed extrinsic (pallet error names mapped by REASONS)."""
    if receipt.is_success:
        return None
    err = receipt.error_message or {}
    name = str(err.get("name") or err.get("type") or "ExtrinsicFailed")
    docs = " ".join(err.get("docs") or [])
    return error_for(REASONS.get(name, name), f"{PALLET}.{call} failed: {name} {docs}".strip())
