"""`HypertensorChain`: `chain.Chain` over substrate-interface against the `Network` pallet.

Call signatures differ between Hypertensor runtime versions, so every extrinsic is
composed from the live runtime metadata: arguments (and fields of struct arguments) are
filled by name from what the node knows, optional ones default to None, and a required
argument the node cannot supply fails loudly naming the call and the argument.
Accounts are Ethereum-style (AccountId20, ECDSA), amounts have 18 decimals, peer ids are
the ASCII bytes of the base58 text and multiaddrs are binary.

Reads are retried (with a reconnect) on transient websocket errors only. A write is
retried only while composing and signing; once submitted it is never re-sent, because a
resend after a dropped connection could execute twice.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from substrateinterface import SubstrateInterface
from substrateinterface.exceptions import SubstrateRequestException

from chain.base import Chain
from chain.multiaddr_bin import encode_multiaddr
from chain.types import (
    UNIT,
    ChainError,
    ConsensusSubmission,
    EpochInfo,
    NodeClass,
    Receipt,
    ScoreEntry,
    SubnetInfo,
    SubnetNode,
    SubnetState,
    error_for,
)
from keys import AccountKey

log = logging.getLogger("mesh_node.chain.hypertensor")
T = TypeVar("T")
PALLET = "Network"
PERCENT = 10**18  # the pallet's percentage factor (1.0)

# Pallet error names -> the chain reason codes of chain.types.
_REASONS = {
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

_NODE_CLASSES = {
    "Registered": NodeClass.REGISTERED,
    "Idle": NodeClass.IDLE,
    "Included": NodeClass.INCLUDED,
    "Validator": NodeClass.VALIDATOR,
    "Deactivated": NodeClass.DEACTIVATED,
}


def _is_transient(exc: BaseException) -> bool:
    try:
        import websocket  # websocket-client, used by substrate-interface

        ws_errors: tuple[type[BaseException], ...] = (websocket.WebSocketException,)
    except ImportError:  # pragma: no cover
        ws_errors = ()
    return isinstance(exc, (ConnectionError, TimeoutError, BrokenPipeError, *ws_errors))


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode(errors="replace")
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return bytes.fromhex(value[2:]).decode()
        except (ValueError, UnicodeDecodeError):
            return value
    return str(value)


def _address(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    return str(value)


def _enum_name(value: Any) -> str:
    if isinstance(value, dict):
        return next(iter(value))
    return str(value)


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


def _fix_btreemaps(substrate: SubstrateInterface) -> None:
    """Teach scalecodec 1.2 to encode the runtime's BTreeMap types.

    scale_info BTreeMaps are registered as a composite over `Vec<(K, V)>` without a
    `sub_type`, so encoding any map argument crashes. Set it from the inner tuple type;
    values are then passed as lists of (key, value) pairs.
    """
    from scalecodec.types import BTreeMap

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


def _btree(entries: list[tuple[bytes, Any, Any]]) -> list[tuple[Any, Any]]:
    """(sort key, key, value) triples -> a BTreeMap argument: unique keys in byte order.

    Rust orders `[u8; 20]` and `Vec<u8>` keys lexicographically by their raw bytes, which
    is the order the runtime re-encodes the map in.
    """
    seen: dict[bytes, tuple[Any, Any]] = {}
    for sort_key, key, value in entries:
        seen.setdefault(sort_key, (key, value))
    return [seen[k] for k in sorted(seen)]


def _is_enum(info: dict) -> bool:
    # substrate-interface decomposes enums with unit variants as lists, structs as dicts of
    # field -> type; an enum with data variants is a dict whose values may be None.
    return any(v is None for v in info.values())


class HypertensorChain(Chain):
    def __init__(
        self,
        ws_url: str,
        coldkey: AccountKey | None = None,
        hotkey: AccountKey | None = None,
        *,
        retries: int = 3,
        max_registration_cost: int | None = None,
        max_burn_amount: int | None = None,
        block_time: float | None = None,
    ):
        self.url = ws_url
        self.coldkey = coldkey
        self.hotkey = hotkey
        self.retries = retries
        self.max_registration_cost = max_registration_cost
        self.max_burn_amount = max_burn_amount
        self._lock = threading.RLock()
        self._substrate: SubstrateInterface | None = None
        self._epoch_length: int | None = None
        self._block_time = block_time

    # ---- connection and retries ----------------------------------------------
    def _connect(self) -> SubstrateInterface:
        if self._substrate is None:
            self._substrate = SubstrateInterface(url=self.url, ss58_format=42)
        return self._substrate

    def _reset(self) -> None:
        if self._substrate is not None:
            try:
                self._substrate.close()
            except Exception:  # already broken
                pass
        self._substrate = None

    def _retry(self, op: Callable[[SubstrateInterface], T], what: str) -> T:
        delay = 0.2
        for attempt in range(self.retries + 1):
            with self._lock:
                try:
                    return op(self._connect())
                except ChainError:
                    raise
                except SubstrateRequestException as e:
                    raise self._map_request_error(e, what) from None
                except Exception as e:
                    if not _is_transient(e):
                        raise
                    self._reset()
                    if attempt == self.retries:
                        raise error_for("Unavailable", f"{what}: {self.url}: {type(e).__name__}: {e}") from None
                    log.warning("transient chain error (%s), retrying %s", type(e).__name__, what)
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    @staticmethod
    def _map_request_error(e: SubstrateRequestException, what: str) -> ChainError:
        msg = str(e)
        if "pay some fees" in msg or "balance too low" in msg.lower():
            return error_for("InsufficientBalance", f"{what}: {msg}")
        return error_for("ChainRejected", f"{what}: {msg}")

    def _query(self, storage: str, params: list | None = None, module: str = PALLET) -> Any:
        def op(s: SubstrateInterface) -> Any:
            res = s.query(module, storage, params or [])
            return None if res is None else res.value

        return self._retry(op, f"read {module}.{storage}")

    def _constant(self, name: str, module: str = PALLET) -> Any:
        return self._retry(lambda s: s.get_constant(module, name).value, f"constant {module}.{name}")

    # ---- writes: compose from metadata, sign, submit once ---------------------
    def _call(self, key: AccountKey | None, role: str, call: str, values: dict[str, Any]) -> Receipt:
        if key is None:
            raise error_for("NoKey", f"{call} needs a {role} key; none was given to this chain client")

        def build(s: SubstrateInterface):
            s.init_runtime()
            _fix_btreemaps(s)
            fn = s.get_metadata_call_function(PALLET, call)
            if fn is None:
                raise error_for("UnsupportedCall", f"this runtime has no call {PALLET}.{call}")
            params = compose_args(call, fn.get_param_info(), values)
            composed = s.compose_call(call_module=PALLET, call_function=call, call_params=params)
            return s.create_signed_extrinsic(call=composed, keypair=key.keypair)

        extrinsic = self._retry(build, f"compose {call}")
        with self._lock:
            s = self._connect()
            try:
                receipt = s.submit_extrinsic(extrinsic, wait_for_inclusion=True)
            except SubstrateRequestException as e:
                raise self._map_request_error(e, call) from None
            except Exception as e:
                if _is_transient(e):
                    self._reset()
                    raise error_for("Unavailable", f"{call} submitted but the connection dropped: {e}") from None
                raise
            if not receipt.is_success:
                err = receipt.error_message or {}
                name = str(err.get("name") or err.get("type") or "ExtrinsicFailed")
                reason = _REASONS.get(name, name)
                raise error_for(reason, f"{PALLET}.{call} failed: {name} {' '.join(err.get('docs') or [])}".strip())
            block = s.get_block_number(receipt.block_hash) if receipt.block_hash else 0
        return Receipt(ok=True, block=int(block or 0), detail={"extrinsic_hash": receipt.extrinsic_hash})

    # ---- reads ------------------------------------------------------------------
    @property
    def epoch_length(self) -> int:
        if self._epoch_length is None:
            self._epoch_length = int(self._constant("EpochLength"))
        return self._epoch_length

    @property
    def block_time(self) -> float:
        if self._block_time is None:
            try:
                self._block_time = 2 * int(self._constant("MinimumPeriod", "Timestamp")) / 1000.0
            except Exception:  # runtime without the constant: Hypertensor's 6 s
                self._block_time = 6.0
            if not self._block_time:
                self._block_time = 6.0
        return self._block_time

    def get_block(self) -> int:
        return int(self._retry(lambda s: s.get_block_number(None), "read block number"))

    def _slot(self, subnet_id: int) -> int:
        return int(self._query("SubnetSlot", [subnet_id]) or 0)

    def get_epoch_info(self, subnet_id: int | None = None) -> EpochInfo:
        block = self.get_block()
        offset = 0 if subnet_id is None else self._slot(subnet_id)
        L = self.epoch_length
        rel = max(0, block - offset)
        in_epoch = rel % L
        return EpochInfo(rel // L, block, L, in_epoch / L, (L - in_epoch) * self.block_time, self.block_time)

    def get_epoch_randomness(self, subnet_id: int, epoch: int) -> bytes:
        """Hash of the epoch's first block (fixed once it exists), mixed with subnet and epoch."""
        start = self._slot(subnet_id) + epoch * self.epoch_length
        if epoch < 0 or start > self.get_block():
            raise error_for("EpochNotStarted", f"epoch {epoch} of subnet {subnet_id} has not started")
        h = self._retry(lambda s: s.get_block_hash(start), "read block hash")
        raw = bytes.fromhex(str(h).removeprefix("0x"))
        return hashlib.sha256(b"epoch" + raw + subnet_id.to_bytes(8, "big") + epoch.to_bytes(8, "big")).digest()

    def get_subnet(self, subnet_id: int) -> SubnetInfo:
        data = self._query("SubnetsData", [subnet_id])
        if not data:
            raise error_for("UnknownSubnet", f"no subnet {subnet_id}")
        owner = self._query("SubnetOwner", [subnet_id])
        start_epoch = int(data.get("start_epoch") or 0)
        return SubnetInfo(
            subnet_id=int(data["id"]),
            name=_text(data.get("name")),
            owner=_address(owner) if owner else "",
            state=SubnetState(_enum_name(data.get("state"))),
            min_stake=int(self._query("SubnetMinStakeBalance", [subnet_id]) or 0),
            max_stake=int(self._query("SubnetMaxStakeBalance", [subnet_id]) or 0),
            registered_block=0,
            activated_block=None if start_epoch >= 2**32 - 1 else start_epoch * self.epoch_length,
            repo=_text(data.get("repo")),
            description=_text(data.get("description")),
        )

    def _node_from(self, subnet_id: int, d: dict, queued: bool = False) -> SubnetNode:
        hotkey = _address(d["hotkey"])
        cls_info = d.get("classification") or {}
        cls = NodeClass.REGISTERED if queued else _NODE_CLASSES.get(_enum_name(cls_info.get("node_class")), NodeClass.IDLE)
        coldkey = self._query("HotkeyOwner", [hotkey])
        rep = self._query("SubnetNodeReputation", [subnet_id, int(d["id"])])
        peer = (d.get("peer_info") or {}).get("peer_id")
        maddr = (d.get("peer_info") or {}).get("multiaddr")
        return SubnetNode(
            subnet_id=subnet_id,
            node_id=int(d["id"]),
            coldkey=_address(coldkey) if coldkey else "",
            hotkey=hotkey,
            peer_id=_text(peer),
            node_class=cls,
            stake=self.get_stake(subnet_id, hotkey),
            reputation=min(1.0, int(rep or 0) / PERCENT),
            registered_epoch=0,
            classified_epoch=int(cls_info.get("start_epoch") or 0),
            multiaddr=maddr if isinstance(maddr, str) else "",
        )

    def get_subnet_nodes(self, subnet_id: int) -> list[SubnetNode]:
        self.get_subnet(subnet_id)

        def op(s: SubstrateInterface) -> list[tuple[dict, bool]]:
            out = []
            for storage, queued in (("SubnetNodesData", False), ("RegisteredSubnetNodesData", True)):
                for _, v in s.query_map(PALLET, storage, [subnet_id]):
                    out.append((v.value, queued))
            return out

        rows = self._retry(op, "read SubnetNodesData")
        return sorted((self._node_from(subnet_id, d, q) for d, q in rows), key=lambda n: n.node_id)

    def _node_by_id(self, subnet_id: int, node_id: int) -> SubnetNode | None:
        d = self._query("SubnetNodesData", [subnet_id, node_id])
        if d:
            return self._node_from(subnet_id, d)
        d = self._query("RegisteredSubnetNodesData", [subnet_id, node_id])
        return self._node_from(subnet_id, d, queued=True) if d else None

    def get_node_by_peer_id(self, subnet_id: int, peer_id: str) -> SubnetNode | None:
        nid = self._query("PeerIdSubnetNodeId", [subnet_id, peer_id.encode()])
        return None if not nid else self._node_by_id(subnet_id, int(nid))

    def get_node_by_hotkey(self, subnet_id: int, hotkey: str) -> SubnetNode | None:
        nid = self._query("HotkeySubnetNodeId", [subnet_id, hotkey])
        return None if not nid else self._node_by_id(subnet_id, int(nid))

    def get_elected_validator(self, subnet_id: int, epoch: int) -> int | None:
        v = self._query("SubnetElectedValidator", [subnet_id, epoch])
        return None if v is None else int(v)

    def get_consensus_submission(self, subnet_id: int, epoch: int) -> ConsensusSubmission | None:
        d = self._query("SubnetConsensusSubmission", [subnet_id, epoch])
        if not d:
            return None
        attests = d.get("attests") or {}
        if isinstance(attests, list):  # BTreeMap decoded as [(k, v), ...]
            attests = dict(attests)
        att: dict[int, int] = {}
        for k, v in attests.items():
            att[int(k)] = int(v.get("block", 0)) if isinstance(v, dict) else int(v or 0)
        data = tuple(ScoreEntry(int(e["subnet_node_id"]), int(e["score"])) for e in d.get("data") or [])
        return ConsensusSubmission(subnet_id, epoch, int(d["validator_id"]), data, att, int(d.get("block") or 0))

    def get_balance(self, account: str) -> int:
        acct = self._query("Account", [account], module="System")
        return int(((acct or {}).get("data") or {}).get("free") or 0)

    def get_stake(self, subnet_id: int, hotkey: str) -> int:
        return int(self._query("AccountSubnetStake", [hotkey, subnet_id]) or 0)

    def _own_node_id(self, subnet_id: int) -> int | None:
        if self.hotkey is None:
            return None
        nid = self._query("HotkeySubnetNodeId", [subnet_id, self.hotkey.address])
        return None if nid is None else int(nid)

    # ---- writes -------------------------------------------------------------
    def register_subnet(
        self,
        name: str,
        *,
        min_stake: int,
        max_stake: int,
        initial_coldkeys: Sequence[str] = (),
        repo: str = "",
        description: str = "",
        bootnodes: dict[str, str] | None = None,
        delegate_stake_percentage: int = PERCENT // 10,
        misc: str = "",
    ) -> int:
        """`bootnodes`: peer id -> text multiaddr (ending in /p2p/<peer id>); the runtime requires one."""
        if self.coldkey is None:
            raise error_for("NoKey", "register_subnet needs the owner's coldkey")
        before = int(self._query("TotalSubnetUids") or 0)
        values: dict[str, Any] = {
            "max_cost": self.max_registration_cost or self.get_balance(self.coldkey.address),
            "name": name.encode(),
            "repo": repo.encode(),
            "description": description.encode(),
            "misc": misc.encode(),
            "min_stake": min_stake,
            "max_stake": max_stake,
            "delegate_stake_percentage": delegate_stake_percentage,
            # BTreeMap args go as (key, value) lists sorted by encoded key: the node decodes
            # into a sorted map and re-encodes it to check the signature (else "badProof").
            "initial_coldkeys": _btree([(bytes.fromhex(c[2:]), c, 1) for c in initial_coldkeys]),
            "initial_validators": _btree([(bytes.fromhex(c[2:]), c, 1) for c in initial_coldkeys]),
        }
        if bootnodes:
            values["bootnodes"] = _btree([(p.encode(), p.encode(), encode_multiaddr(m)) for p, m in bootnodes.items()])
        self._call(self.coldkey, "coldkey", "register_subnet", values)
        sid = self._query("SubnetName", [name.encode()])
        if sid is None:
            sid = before + 1
        return int(sid)

    def activate_subnet(self, subnet_id: int) -> Receipt:
        return self._call(self.coldkey, "coldkey", "activate_subnet", {"subnet_id": subnet_id})

    def _peer_info(self, peer_id: str, multiaddr: str) -> dict:
        return {"peer_id": peer_id.encode(), "multiaddr": encode_multiaddr(multiaddr) if multiaddr else None}

    def register_subnet_node(
        self, subnet_id: int, *, hotkey: str, peer_id: str, stake: int, multiaddr: str = ""
    ) -> int:
        if self.coldkey is None:
            raise error_for("NoKey", "register_subnet_node needs the coldkey")
        max_burn = self.max_burn_amount
        if max_burn is None:
            max_burn = max(0, self.get_balance(self.coldkey.address) - stake)
        values = {
            "subnet_id": subnet_id,
            "hotkey": hotkey,
            "peer_info": self._peer_info(peer_id, multiaddr),
            "delegate_reward_rate": 0,
            "stake_to_be_added": stake,
            "max_burn_amount": max_burn,
        }
        self._call(self.coldkey, "coldkey", "register_subnet_node", values)
        nid = self._query("HotkeySubnetNodeId", [subnet_id, hotkey])
        if nid is None:
            raise error_for("UnknownNode", f"registered, but hotkey {hotkey} has no node id in subnet {subnet_id}")
        return int(nid)

    def remove_subnet_node(self, subnet_id: int, node_id: int) -> Receipt:
        return self._call(
            self.coldkey, "coldkey", "remove_subnet_node", {"subnet_id": subnet_id, "subnet_node_id": node_id}
        )

    def update_peer_info(self, subnet_id: int, node_id: int, *, peer_id: str, multiaddr: str = "") -> Receipt:
        info = self._peer_info(peer_id, multiaddr)
        values = {"subnet_id": subnet_id, "subnet_node_id": node_id, "new_peer_info": info, "peer_info": info}
        return self._call(self.coldkey, "coldkey", "update_peer_info", values)

    def add_stake(self, subnet_id: int, node_id: int, *, hotkey: str, amount: int) -> Receipt:
        values = {"subnet_id": subnet_id, "subnet_node_id": node_id, "hotkey": hotkey, "stake_to_be_added": amount}
        return self._call(self.coldkey, "coldkey", "add_stake", values)

    def remove_stake(self, subnet_id: int, *, hotkey: str, amount: int) -> Receipt:
        values = {"subnet_id": subnet_id, "hotkey": hotkey, "stake_to_be_removed": amount}
        return self._call(self.coldkey, "coldkey", "remove_stake", values)

    def claim_unbondings(self) -> Receipt:
        return self._call(self.coldkey, "coldkey", "claim_unbondings", {})

    def add_to_delegate_stake(self, subnet_id: int, amount: int) -> Receipt:
        """Delegate stake to a subnet (Hypertensor pays subnet emissions only when some exists)."""
        return self._call(
            self.coldkey, "coldkey", "add_to_delegate_stake", {"subnet_id": subnet_id, "stake_to_be_added": amount}
        )

    def propose_attestation(self, subnet_id: int, data: Sequence[ScoreEntry]) -> Receipt:
        # The chain only collapses adjacent duplicates: send one entry per node, sorted.
        best: dict[int, int] = {}
        for e in data:
            best[int(e.node_id)] = min(int(e.score), best.get(int(e.node_id), int(e.score)))
        entries = [{"subnet_node_id": n, "score": s} for n, s in sorted(best.items())]
        values: dict[str, Any] = {"subnet_id": subnet_id, "data": entries}
        nid = self._own_node_id(subnet_id)
        if nid is not None:
            values["subnet_node_id"] = nid  # newer runtimes name the proposer
        return self._call(self.hotkey, "hotkey", "propose_attestation", values)

    def attest(self, subnet_id: int) -> Receipt:
        values: dict[str, Any] = {"subnet_id": subnet_id}
        nid = self._own_node_id(subnet_id)
        if nid is not None:
            values["subnet_node_id"] = nid
        return self._call(self.hotkey, "hotkey", "attest", values)

    def transfer(self, to: str, amount: int, *, key: AccountKey | None = None) -> Receipt:
        """Balances.transfer_keep_alive from `key` (default: the coldkey)."""
        k = key or self.coldkey
        if k is None:
            raise error_for("NoKey", "transfer needs a key")

        def build(s: SubstrateInterface):
            call = s.compose_call("Balances", "transfer_keep_alive", {"dest": to, "value": amount})
            return s.create_signed_extrinsic(call=call, keypair=k.keypair)

        ext = self._retry(build, "compose transfer")
        with self._lock:
            try:
                r = self._connect().submit_extrinsic(ext, wait_for_inclusion=True)
            except SubstrateRequestException as e:
                raise self._map_request_error(e, "transfer") from None
        if not r.is_success:
            raise error_for("TransferFailed", str(r.error_message))
        return Receipt(ok=True, block=0, detail={"extrinsic_hash": r.extrinsic_hash})

    def close(self) -> None:
        with self._lock:
            self._reset()


__all__ = ["HypertensorChain", "compose_args", "UNIT"]
