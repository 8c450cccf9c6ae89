"""`HypertensorChain`: `chain.Chain` over substrate-interface against the `Network` pallet.

Reads go through `connection.SubstrateConnection` (retried on transient errors); writes
are composed from the runtime metadata (extrinsics.py), signed and sent once; storage
values are decoded by records.py. Amounts have 18 decimals; multiaddrs are sent binary.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from substrateinterface import SubstrateInterface
from substrateinterface.exceptions import SubstrateRequestException

from chain.base import Chain, default_cap
from chain.hypertensor import records
from chain.hypertensor.connection import PALLET, SubstrateConnection, map_request_error
from chain.hypertensor.extrinsics import btree, failure, is_map_argument, signed_call
from chain.hypertensor.records import PERCENT
from chain.multiaddr_bin import encode_multiaddr
from chain.types import (
    ChainError,
    ConsensusSubmission,
    EpochInfo,
    Receipt,
    ScoreEntry,
    SubnetInfo,
    SubnetNode,
    error_for,
)
from keys import AccountKey, NodeKey


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
        self.max_registration_cost = max_registration_cost
        self.max_burn_amount = max_burn_amount
        self.connection = SubstrateConnection(ws_url, retries)
        self._epoch_length: int | None = None
        self._block_time = block_time

    # ---- writes: compose from metadata, sign, submit once ---------------------
    def _call(self, key: AccountKey | None, role: str, call: str, values: dict[str, Any]) -> Receipt:
        if key is None:
            raise error_for("NoKey", f"{call} needs a {role} key; none was given to this chain client")
        extrinsic = self.connection.retry(lambda s: signed_call(s, key, call, values), f"compose {call}")
        with self.connection.session() as s:
            receipt = self.connection.submit(s, extrinsic, call)
            err = failure(receipt, call)
            if err is not None:
                raise err
            block = s.get_block_number(receipt.block_hash) if receipt.block_hash else 0
        return Receipt(ok=True, block=int(block or 0), detail={"extrinsic_hash": receipt.extrinsic_hash})

    # ---- reads ------------------------------------------------------------------
    @property
    def epoch_length(self) -> int:
        if self._epoch_length is None:
            self._epoch_length = int(self.connection.constant("EpochLength"))
        return self._epoch_length

    @property
    def block_time(self) -> float:
        if self._block_time is None:
            try:
                self._block_time = 2 * int(self.connection.constant("MinimumPeriod", "Timestamp")) / 1000.0
            except Exception:  # runtime without the constant: Hypertensor's 6 s
                self._block_time = 6.0
            if not self._block_time:
                self._block_time = 6.0
        return self._block_time

    def get_block(self) -> int:
        return int(self.connection.retry(lambda s: s.get_block_number(None), "read block number"))

    def _slot(self, subnet_id: int) -> int:
        return int(self.connection.query("SubnetSlot", [subnet_id]) or 0)

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
        h = self.connection.retry(lambda s: s.get_block_hash(start), "read block hash")
        raw = bytes.fromhex(str(h).removeprefix("0x"))
        return hashlib.sha256(b"epoch" + raw + subnet_id.to_bytes(8, "big") + epoch.to_bytes(8, "big")).digest()

    def get_subnet(self, subnet_id: int) -> SubnetInfo:
        data = self.connection.query("SubnetsData", [subnet_id])
        if not data:
            raise error_for("UnknownSubnet", f"no subnet {subnet_id}")
        return records.subnet_info(
            data,
            self.connection.query("SubnetOwner", [subnet_id]),
            min_stake=self.connection.query("SubnetMinStakeBalance", [subnet_id]),
            max_stake=self.connection.query("SubnetMaxStakeBalance", [subnet_id]),
            epoch_length=self.epoch_length,
        )

    def get_bootnodes(self, subnet_id: int) -> list[str]:
        """`SubnetBootnodes[subnet_id]` (peer id -> binary multiaddr), as hex or text strings."""
        try:
            value = self.connection.query("SubnetBootnodes", [subnet_id])
        except Exception as e:  # a runtime without this storage item: no bootnodes, not a failure
            if "SubnetBootnodes" in str(e) or "not found" in str(e).lower():
                return []
            raise
        return records.bootnodes(value)

    def _node_from(self, subnet_id: int, d: dict, queued: bool = False) -> SubnetNode:
        hotkey = records.address(d["hotkey"])
        return records.subnet_node(
            subnet_id,
            d,
            queued=queued,
            coldkey=self.connection.query("HotkeyOwner", [hotkey]),
            reputation=self.connection.query("SubnetNodeReputation", [subnet_id, int(d["id"])]),
            stake=self.get_stake(subnet_id, hotkey),
        )

    def get_subnet_nodes(self, subnet_id: int) -> list[SubnetNode]:
        self.get_subnet(subnet_id)

        def op(s: SubstrateInterface) -> list[tuple[dict, bool]]:
            out = []
            for storage, queued in (("SubnetNodesData", False), ("RegisteredSubnetNodesData", True)):
                for _, v in s.query_map(PALLET, storage, [subnet_id]):
                    out.append((v.value, queued))
            return out

        rows = self.connection.retry(op, "read SubnetNodesData")
        return sorted((self._node_from(subnet_id, d, q) for d, q in rows), key=lambda n: n.node_id)

    def _node_by_id(self, subnet_id: int, node_id: int) -> SubnetNode | None:
        """Active record first, then the queue; a storage default (another id) means absent."""
        d = self.connection.query("SubnetNodesData", [subnet_id, node_id])
        if records.is_record_of(d, node_id):
            return self._node_from(subnet_id, d)
        d = self.connection.query("RegisteredSubnetNodesData", [subnet_id, node_id])
        return self._node_from(subnet_id, d, queued=True) if records.is_record_of(d, node_id) else None

    def get_node(self, subnet_id: int, node_id: int) -> SubnetNode | None:
        return self._node_by_id(subnet_id, node_id)

    def get_node_by_peer_id(self, subnet_id: int, peer_id: str) -> SubnetNode | None:
        nid = self.connection.query("PeerIdSubnetNodeId", [subnet_id, peer_id.encode()])
        return None if not nid else self._node_by_id(subnet_id, int(nid))

    def get_node_by_hotkey(self, subnet_id: int, hotkey: str) -> SubnetNode | None:
        nid = self.connection.query("HotkeySubnetNodeId", [subnet_id, hotkey])
        return None if not nid else self._node_by_id(subnet_id, int(nid))

    def get_elected_validator(self, subnet_id: int, epoch: int) -> int | None:
        v = self.connection.query("SubnetElectedValidator", [subnet_id, epoch])
        return None if v is None else int(v)

    def get_consensus_submission(self, subnet_id: int, epoch: int) -> ConsensusSubmission | None:
        d = self.connection.query("SubnetConsensusSubmission", [subnet_id, epoch])
        return records.consensus_submission(subnet_id, epoch, d) if d else None

    def get_balance(self, account: str) -> int:
        acct = self.connection.query("Account", [account], module="System")
        return int(((acct or {}).get("data") or {}).get("free") or 0)

    def get_stake(self, subnet_id: int, hotkey: str) -> int:
        return int(self.connection.query("AccountSubnetStake", [hotkey, subnet_id]) or 0)

    def _own_node_id(self, subnet_id: int) -> int | None:
        if self.hotkey is None:
            return None
        nid = self.connection.query("HotkeySubnetNodeId", [subnet_id, self.hotkey.address])
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
        max_cost: int | None = None,
    ) -> int:
        """`bootnodes`: peer id -> text multiaddr (ending in /p2p/<peer id>); the runtime requires one.
        `max_cost` caps the burn (default: the cost read from the chain plus a margin, never the balance)."""
        if self.coldkey is None:
            raise error_for("NoKey", "register_subnet needs the owner's coldkey")
        if not bootnodes:
            raise error_for("MissingBootnode", "Hypertensor requires at least one bootnode (--bootnode MULTIADDR)")
        cap = self._cap(max_cost, self.max_registration_cost, self.registration_cost(), "subnet registration cost",
                        "--max-cost")
        before = int(self.connection.query("TotalSubnetUids") or 0)
        values: dict[str, Any] = {
            "max_cost": cap,
            "name": name.encode(),
            "repo": repo.encode(),
            "description": description.encode(),
            "misc": misc.encode(),
            "min_stake": min_stake,
            "max_stake": max_stake,
            "delegate_stake_percentage": delegate_stake_percentage,
            # BTreeMap args go as (key, value) lists sorted by encoded key: the node decodes
            # into a sorted map and re-encodes it to check the signature (else "badProof").
            "initial_coldkeys": btree([(bytes.fromhex(c[2:]), c, 1) for c in initial_coldkeys]),
            "initial_validators": btree([(bytes.fromhex(c[2:]), c, 1) for c in initial_coldkeys]),
        }
        values["key_types"] = ["Ed25519"]  # runtimes that ask which peer id key types the subnet accepts
        if self.connection.retry(lambda s: is_map_argument(s, "register_subnet", ("subnet_data", "bootnodes")),
                                 "read call metadata"):
            values["bootnodes"] = btree([(p.encode(), p.encode(), encode_multiaddr(m)) for p, m in bootnodes.items()])
        else:  # older runtimes: a set of text multiaddrs
            values["bootnodes"] = sorted(m.encode() for m in bootnodes.values())
        self._call(self.coldkey, "coldkey", "register_subnet", values)
        sid = self.connection.query("SubnetName", [name.encode()])
        if sid is None:
            sid = before + 1
        return int(sid)

    def activate_subnet(self, subnet_id: int) -> Receipt:
        return self._call(self.coldkey, "coldkey", "activate_subnet", {"subnet_id": subnet_id})

    def _peer_info(self, peer_id: str, multiaddr: str) -> dict:
        return {"peer_id": peer_id.encode(), "multiaddr": encode_multiaddr(multiaddr) if multiaddr else None}

    def register_subnet_node(
        self, subnet_id: int, *, hotkey: str, peer_id: str, stake: int, multiaddr: str = "",
        max_burn: int | None = None,
    ) -> int:
        if self.coldkey is None:
            raise error_for("NoKey", "register_subnet_node needs the coldkey")
        max_burn = self._cap(max_burn, self.max_burn_amount, self.node_registration_burn(subnet_id),
                             "node registration burn", "--max-burn")
        values = {
            "subnet_id": subnet_id,
            "hotkey": hotkey,
            "peer_info": self._peer_info(peer_id, multiaddr),
            # Older runtimes take three distinct peer ids flat (node, bootnode, client) and no multiaddr;
            # mesh-node runs one peer, so the other two are fresh identities nobody serves.
            "peer_id": peer_id.encode(), "bootnode_peer_id": NodeKey.generate().peer_id.encode(),
            "client_peer_id": NodeKey.generate().peer_id.encode(),
            "delegate_reward_rate": 0,
            "stake_to_be_added": stake,
            "max_burn_amount": max_burn,
        }
        self._call(self.coldkey, "coldkey", "register_subnet_node", values)
        nid = self.connection.query("HotkeySubnetNodeId", [subnet_id, hotkey])
        if nid is None:
            raise error_for("UnknownNode", f"registered, but hotkey {hotkey} has no node id in subnet {subnet_id}")
        return int(nid)

    def remove_subnet_node(self, subnet_id: int, node_id: int) -> Receipt:
        return self._call(
            self.coldkey, "coldkey", "remove_subnet_node", {"subnet_id": subnet_id, "subnet_node_id": node_id}
        )

    def update_peer_info(self, subnet_id: int, node_id: int, *, peer_id: str, multiaddr: str = "") -> Receipt:
        info = self._peer_info(peer_id, multiaddr)
        values = {"subnet_id": subnet_id, "subnet_node_id": node_id, "new_peer_info": info, "peer_info": info,
                  "new_peer_id": peer_id.encode()}
        call = self._first_call("update_peer_info", "update_peer_id")  # older runtimes: update_peer_id
        return self._call(self.coldkey, "coldkey", call, values)

    def add_stake(self, subnet_id: int, node_id: int, *, hotkey: str, amount: int) -> Receipt:
        values = {"subnet_id": subnet_id, "subnet_node_id": node_id, "hotkey": hotkey, "stake_to_be_added": amount}
        return self._call(self.coldkey, "coldkey", "add_stake", values)

    def remove_stake(self, subnet_id: int, *, hotkey: str, amount: int) -> Receipt:
        values = {"subnet_id": subnet_id, "hotkey": hotkey, "stake_to_be_removed": amount}
        return self._call(self.coldkey, "coldkey", "remove_stake", values)

    def claim_unbondings(self) -> Receipt:
        return self._call(self.coldkey, "coldkey", "claim_unbondings", {})

    # ---- costs ----------------------------------------------------------------
    @staticmethod
    def _cap(given: int | None, configured: int | None, cost: int | None, what: str, flag: str) -> int:
        """The cap to send: given, else configured, else the chain's current cost plus a margin."""
        cap = given if given is not None else configured
        if cap is None:
            if cost is None:
                raise error_for("CostUnknown", f"cannot read the {what} from this runtime; give {flag} explicitly")
            return default_cap(cost)
        if cost is not None and cost > cap:
            raise error_for("CostExceedsMax", f"the {what} is {cost}, above the cap {cap} ({flag})")
        return cap

    def _optional(self, storage: str, params: list | None = None) -> Any:
        """A storage value, or None when this runtime has no such item."""
        try:
            return self.connection.query(storage, params)
        except ChainError:
            raise
        except Exception:  # StorageFunctionNotFound and the like: another runtime version
            return None

    def registration_cost(self) -> int | None:
        """Upper bound of the current subnet registration cost: it decays from the last cost to the minimum."""
        last, floor = self._optional("LastRegistrationCost"), self._optional("MinRegistrationCost")
        if last is None and floor is None:
            return None
        return max(int(last or 0), int(floor or 0))

    def node_registration_burn(self, subnet_id: int) -> int | None:
        """base burn x the subnet's current burn rate (PERCENT = 1.0), as the pallet computes it."""
        base = self._optional("BaseNodeBurnAmount")
        if base is None:
            return None
        rate = self._optional("CurrentNodeBurnRate", [subnet_id])
        return int(base) * int(PERCENT if rate is None else rate) // PERCENT

    # ---- delegate stake (shares on chain; amounts in balance units here) ----------
    def _delegate_totals(self, subnet_id: int) -> tuple[int, int]:
        balance = int(self._optional("TotalSubnetDelegateStakeBalance", [subnet_id]) or 0)
        shares = int(self._optional("TotalSubnetDelegateStakeShares", [subnet_id]) or 0)
        return balance, shares

    def _shares_of(self, subnet_id: int, account: str) -> int:
        return int(self._optional("AccountSubnetDelegateStakeShares", [account, subnet_id]) or 0)

    def get_delegate_stake(self, subnet_id: int, account: str) -> int:
        balance, shares = self._delegate_totals(subnet_id)
        return 0 if not shares else self._shares_of(subnet_id, account) * balance // shares

    def get_subnet_delegate_stake(self, subnet_id: int) -> int:
        return self._delegate_totals(subnet_id)[0]

    def _first_call(self, *names: str) -> str:
        def op(s: SubstrateInterface) -> str:
            s.init_runtime()
            for n in names:
                if s.get_metadata_call_function(PALLET, n) is not None:
                    return n
            raise error_for("UnsupportedCall", f"this runtime has none of {PALLET}.{'/'.join(names)}")

        return self.connection.retry(op, "read call metadata")

    def add_delegate_stake(self, subnet_id: int, amount: int) -> Receipt:
        """Delegate stake to a subnet (Hypertensor pays node emissions only to subnets that have some)."""
        call = self._first_call("add_to_delegate_stake", "add_subnet_delegate_stake")
        values = {"subnet_id": subnet_id, "stake_to_be_added": amount, "min_shares_out": 0}
        return self._call(self.coldkey, "coldkey", call, values)

    add_to_delegate_stake = add_delegate_stake  # the library name older callers used

    def remove_delegate_stake(self, subnet_id: int, amount: int) -> Receipt:
        """Withdraw `amount` (balance units), converted to the shares the pallet takes, capped at all of them."""
        if self.coldkey is None:
            raise error_for("NoKey", "remove_delegate_stake needs the coldkey")
        balance, total = self._delegate_totals(subnet_id)
        mine = self._shares_of(subnet_id, self.coldkey.address)
        if not mine or not balance:
            raise error_for("InsufficientStake", f"no delegate stake in subnet {subnet_id}")
        shares = min(mine, -(-amount * total // balance))
        values = {"subnet_id": subnet_id, "shares_to_be_removed": shares, "min_balance_out": 0}
        return self._call(self.coldkey, "coldkey", "remove_delegate_stake", values)

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

        ext = self.connection.retry(build, "compose transfer")
        with self.connection.session() as s:
            try:
                r = s.submit_extrinsic(ext, wait_for_inclusion=True)
            except SubstrateRequestException as e:
                raise map_request_error(e, "transfer") from None
        if not r.is_success:
            raise error_for("TransferFailed", str(r.error_message))
        return Receipt(ok=True, block=0, detail={"extrinsic_hash": r.extrinsic_hash})

    def close(self) -> None:
        self.connection.close()


__all__ = ["HypertensorChain"]
