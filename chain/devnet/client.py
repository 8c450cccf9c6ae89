"""`DevnetChain`: the `chain.Chain` interface over the devnet's HTTP JSON API.

Writes are signed locally (coldkey for registration and stake, hotkey for proposals and
attestations) with a per-account nonce; chain rejections come back as the typed errors
of `chain.types`, transport failures as `ChainUnavailableError`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import httpx

from chain.base import Chain, default_cap
from chain.devnet import codec
from chain.devnet.config import dev_accounts
from chain.devnet.tx import sign_tx
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
from keys import AccountKey


class DevnetChain(Chain):
    def __init__(
        self,
        url: str,
        coldkey: AccountKey | None = None,
        hotkey: AccountKey | None = None,
        *,
        timeout: float = 10.0,
    ):
        self.url = url.rstrip("/")
        self.coldkey = coldkey
        self.hotkey = hotkey
        self._http = httpx.Client(base_url=self.url, timeout=timeout)
        self._lock = threading.Lock()
        self._nonces: dict[str, int] = {}
        self._chain_id: str | None = None
        self._block_time: float | None = None

    # ---- transport ----------------------------------------------------------
    def _request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise error_for("Unavailable", f"devnet chain at {self.url} unreachable: {type(e).__name__}") from None
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
                raise error_for(str(err["reason"]), str(err.get("message", "")))
            except (ValueError, KeyError, TypeError):
                raise error_for("Unavailable", f"devnet chain answered HTTP {resp.status_code}") from None
        try:
            return resp.json()
        except ValueError:
            raise error_for("Unavailable", "devnet chain sent a non-JSON answer") from None

    def _get(self, path: str) -> Any:
        return self._request("GET", path)

    @property
    def chain_id(self) -> str:
        if self._chain_id is None:
            info = self._get("/chain")
            self._chain_id = str(info["chain_id"])
            self._block_time = float(info["config"]["block_time"])
        return self._chain_id

    def chain_info(self) -> dict:
        return self._get("/chain")

    def _send(self, key: AccountKey | None, role: str, call: str, args: dict) -> dict:
        """Sign and submit; refresh the nonce and retry once if another client used it."""
        if key is None:
            raise error_for("NoKey", f"{call} needs a {role} key; none was given to this chain client")
        chain_id = self.chain_id
        for attempt in range(3):
            with self._lock:
                if attempt or key.address not in self._nonces:
                    self._nonces[key.address] = int(self._get(f"/accounts/{key.address}")["nonce"])
                nonce = self._nonces[key.address] + 1
                self._nonces[key.address] = nonce
            body, sig = sign_tx(key, chain_id, call, args, nonce)
            try:
                return self._request("POST", "/tx", json={"body": body.decode(), "signature": sig.hex()})
            except ChainError as e:
                if e.reason != "NonceReused" or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _receipt(self, out: dict) -> Receipt:
        return Receipt(ok=bool(out.get("ok")), block=int(out.get("block", 0)), detail=dict(out.get("result") or {}))

    # ---- reads --------------------------------------------------------------
    def get_block(self) -> int:
        return int(self._get("/block")["block"])

    def get_epoch_info(self, subnet_id: int | None = None) -> EpochInfo:
        return codec.epoch_info_from_json(self._get("/epoch"))

    def get_epoch_randomness(self, subnet_id: int, epoch: int) -> bytes:
        return bytes.fromhex(self._get(f"/randomness/{subnet_id}/{epoch}")["randomness"])

    def get_subnet(self, subnet_id: int) -> SubnetInfo:
        return codec.subnet_from_json(self._get(f"/subnets/{subnet_id}"))

    def list_subnets(self) -> list[SubnetInfo]:
        return [codec.subnet_from_json(s) for s in self._get("/subnets")]

    def get_subnet_nodes(self, subnet_id: int) -> list[SubnetNode]:
        return [codec.node_from_json(n) for n in self._get(f"/subnets/{subnet_id}/nodes")]

    def get_node(self, subnet_id: int, node_id: int) -> SubnetNode | None:
        d = self._get(f"/subnets/{subnet_id}/nodes/{node_id}")
        return None if d is None else codec.node_from_json(d)

    def get_node_by_peer_id(self, subnet_id: int, peer_id: str) -> SubnetNode | None:
        d = self._get(f"/subnets/{subnet_id}/peer/{peer_id}")
        return None if d is None else codec.node_from_json(d)

    def get_node_by_hotkey(self, subnet_id: int, hotkey: str) -> SubnetNode | None:
        d = self._get(f"/subnets/{subnet_id}/hotkey/{hotkey}")
        return None if d is None else codec.node_from_json(d)

    def get_elected_validator(self, subnet_id: int, epoch: int) -> int | None:
        v = self._get(f"/subnets/{subnet_id}/elected/{epoch}")["node_id"]
        return None if v is None else int(v)

    def get_validator_snapshot(self, subnet_id: int, epoch: int) -> list[int]:
        return [int(x) for x in self._get(f"/subnets/{subnet_id}/elected/{epoch}")["snapshot"]]

    def get_consensus_submission(self, subnet_id: int, epoch: int) -> ConsensusSubmission | None:
        d = self._get(f"/subnets/{subnet_id}/submission/{epoch}")
        return None if d is None else codec.submission_from_json(d)

    def get_epoch_result(self, subnet_id: int, epoch: int) -> dict | None:
        """Devnet only: outcome ('accepted'|'rejected'|'no_proposal'), attestation counts, rewards."""
        return self._get(f"/subnets/{subnet_id}/result/{epoch}")

    def get_balance(self, account: str) -> int:
        return codec.as_int(self._get(f"/accounts/{account}")["balance"])

    def get_unbondings(self, account: str) -> list[dict]:
        return list(self._get(f"/accounts/{account}")["unbondings"])

    def get_stake(self, subnet_id: int, hotkey: str) -> int:
        return codec.as_int(self._get(f"/subnets/{subnet_id}/stake/{hotkey}")["stake"])

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
        max_cost: int | None = None,
    ) -> int:
        """`bootnodes` is accepted for parity with Hypertensor; the devnet keeps no bootnode list.
        `max_cost` caps the registration cost (default: the current cost plus a margin)."""
        cost = self.registration_cost()
        args = {
            "max_cost": str(default_cap(cost) if max_cost is None else max_cost),
            "name": name,
            "min_stake": str(min_stake),
            "max_stake": str(max_stake),
            "initial_coldkeys": list(initial_coldkeys),
            "repo": repo,
            "description": description,
        }
        return int(self._send(self.coldkey, "coldkey", "register_subnet", args)["result"]["subnet_id"])

    def activate_subnet(self, subnet_id: int) -> Receipt:
        return self._receipt(self._send(self.coldkey, "coldkey", "activate_subnet", {"subnet_id": subnet_id}))

    def register_subnet_node(
        self, subnet_id: int, *, hotkey: str, peer_id: str, stake: int, multiaddr: str = "",
        max_burn: int | None = None,
    ) -> int:
        cap = default_cap(self.node_registration_burn(subnet_id)) if max_burn is None else max_burn
        args = {
            "subnet_id": subnet_id, "hotkey": hotkey, "peer_id": peer_id, "stake": str(stake), "multiaddr": multiaddr,
            "max_burn": str(cap),
        }  # fmt: skip
        return int(self._send(self.coldkey, "coldkey", "register_subnet_node", args)["result"]["node_id"])

    def remove_subnet_node(self, subnet_id: int, node_id: int) -> Receipt:
        args = {"subnet_id": subnet_id, "node_id": node_id}
        return self._receipt(self._send(self.coldkey, "coldkey", "remove_subnet_node", args))

    def update_peer_info(self, subnet_id: int, node_id: int, *, peer_id: str, multiaddr: str = "") -> Receipt:
        args = {"subnet_id": subnet_id, "node_id": node_id, "peer_id": peer_id, "multiaddr": multiaddr}
        return self._receipt(self._send(self.coldkey, "coldkey", "update_peer_info", args))

    def add_stake(self, subnet_id: int, node_id: int, *, hotkey: str, amount: int) -> Receipt:
        args = {"subnet_id": subnet_id, "node_id": node_id, "hotkey": hotkey, "amount": str(amount)}
        return self._receipt(self._send(self.coldkey, "coldkey", "add_stake", args))

    def remove_stake(self, subnet_id: int, *, hotkey: str, amount: int) -> Receipt:
        args = {"subnet_id": subnet_id, "hotkey": hotkey, "amount": str(amount)}
        return self._receipt(self._send(self.coldkey, "coldkey", "remove_stake", args))

    def registration_cost(self) -> int:
        return int(self.chain_info()["config"]["subnet_registration_cost"])

    def node_registration_burn(self, subnet_id: int) -> int:
        return int(self.chain_info()["config"].get("node_registration_burn", 0))

    def get_delegate_stake(self, subnet_id: int, account: str) -> int:
        return codec.as_int(self._get(f"/subnets/{subnet_id}/delegate/{account}")["delegate_stake"])

    def get_subnet_delegate_stake(self, subnet_id: int) -> int:
        probe = "0x" + "00" * 20  # any address: the answer carries the subnet's total too
        return codec.as_int(self._get(f"/subnets/{subnet_id}/delegate/{probe}")["subnet_delegate_stake"])

    def add_delegate_stake(self, subnet_id: int, amount: int) -> Receipt:
        args = {"subnet_id": subnet_id, "amount": str(amount)}
        return self._receipt(self._send(self.coldkey, "coldkey", "add_to_delegate_stake", args))

    def remove_delegate_stake(self, subnet_id: int, amount: int) -> Receipt:
        args = {"subnet_id": subnet_id, "amount": str(amount)}
        return self._receipt(self._send(self.coldkey, "coldkey", "remove_delegate_stake", args))

    def claim_unbondings(self) -> Receipt:
        return self._receipt(self._send(self.coldkey, "coldkey", "claim_unbondings", {}))

    def propose_attestation(self, subnet_id: int, data: Sequence[ScoreEntry]) -> Receipt:
        entries = [{"node_id": int(e.node_id), "score": str(int(e.score))} for e in data]
        return self._receipt(
            self._send(self.hotkey, "hotkey", "propose_attestation", {"subnet_id": subnet_id, "data": entries})
        )

    def attest(self, subnet_id: int) -> Receipt:
        return self._receipt(self._send(self.hotkey, "hotkey", "attest", {"subnet_id": subnet_id}))

    def transfer(self, to: str, amount: int, *, key: AccountKey | None = None) -> Receipt:
        """Send `amount` from `key` (default: the coldkey) to `to`."""
        k = key or self.coldkey
        return self._receipt(self._send(k, "coldkey", "transfer", {"to": to, "amount": str(amount)}))

    # ---- devnet helpers -----------------------------------------------------
    def fund(self, account: str, amount: int) -> Receipt:
        """Send `amount` from the dev faucet (dev account #0) to `account`."""
        return self.transfer(account, amount, key=dev_accounts(1)[0])

    def wait_for_block(self, block: int, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            b = self.get_block()
            if b >= block:
                return b
            if time.monotonic() > deadline:
                raise error_for("Timeout", f"block {block} not reached within {timeout}s (at {b})")
            time.sleep(min(0.05, max(0.01, (self._block_time or 0.1) / 4)))

    def wait_for_epoch(self, epoch: int, timeout: float = 120.0) -> EpochInfo:
        info = self.get_epoch_info()
        self.wait_for_block(epoch * info.blocks_per_epoch, timeout)
        return self.get_epoch_info()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DevnetChain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
