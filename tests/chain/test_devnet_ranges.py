"""Issue 17: the devnet chain (a real process) answers out-of-range, negative, huge or non-numeric
parameters in any path or transaction body with a 400 and a JSON error, never a 500."""

from __future__ import annotations

import itertools

import httpx
import pytest

from chain.devnet import dev_accounts
from chain.devnet.codec import canonical_json
from chain.devnet.tx import TX_DOMAIN, sign_tx
from keys import AccountKey

U32_MAX, U64_MAX, U128_MAX = 2**32 - 1, 2**64 - 1, 2**128 - 1

# A fuzz-ish but bounded set of bad integers, as they would appear in a URL.
BAD_INTS = [
    str(2**63), str(2**64), str(U64_MAX), str(2**32), str(2**128), str(2**256), "9" * 400,
    "-1", str(-(2**63) - 1), "-0x1", "abc", "1.5", "1e3", "0x10", "%00", "1%20OR%201", "½",
]  # fmt: skip
BAD_STRINGS = {  # string path parameters that are not what the route takes
    "hotkey": ["x" * 300, str(2**64), "0x" + "g" * 40, "0x" + "1" * 39],
    "address": ["x" * 300, str(2**64), "0x" + "g" * 40, "-1"],
    "peer_id": ["1" * 300],
}
GOOD = {"subnet_id": "1", "node_id": "0", "epoch": "0", "peer_id": "12D3KooWabc",
        "hotkey": dev_accounts(1)[0].address, "address": dev_accounts(1)[0].address}  # fmt: skip
ROUTES = [
    "/randomness/{subnet_id}/{epoch}",
    "/subnets/{subnet_id}",
    "/subnets/{subnet_id}/nodes",
    "/subnets/{subnet_id}/nodes/{node_id}",
    "/subnets/{subnet_id}/peer/{peer_id}",
    "/subnets/{subnet_id}/hotkey/{hotkey}",
    "/subnets/{subnet_id}/elected/{epoch}",
    "/subnets/{subnet_id}/submission/{epoch}",
    "/subnets/{subnet_id}/result/{epoch}",
    "/subnets/{subnet_id}/stake/{hotkey}",
    "/subnets/{subnet_id}/delegate/{address}",
    "/accounts/{address}",
]
INT_PARAMS = {"subnet_id", "node_id", "epoch"}


def _assert_400(r: httpx.Response, what: str) -> None:
    assert r.status_code == 400, f"{what}: HTTP {r.status_code} {r.text[:200]}"
    assert r.json()["error"]["reason"] == "InvalidRequest", what


def test_every_parameterised_route_is_covered(tmp_path):
    """New routes with parameters must join ROUTES (and so this test)."""
    from chain.devnet.server import create_app
    from chain.devnet.state import ChainState

    st = ChainState(tmp_path / "c.db")
    try:
        paths = {r.path for r in create_app(st, produce=False).routes if "{" in getattr(r, "path", "")}
    finally:
        st.close()
    assert paths <= set(ROUTES), f"routes without range tests: {sorted(paths - set(ROUTES))}"


@pytest.mark.parametrize("route", ROUTES)
def test_bad_path_parameters_are_400(devnet, route):
    params = [p.strip("{}") for p in route.split("/") if p.startswith("{")]
    with httpx.Client(base_url=devnet.url, timeout=10) as http:
        for name in params:
            bad = BAD_INTS if name in INT_PARAMS else BAD_STRINGS[name]
            for value in bad:
                url = route.format(**{**GOOD, name: value})
                _assert_400(http.get(url), f"GET {url[:120]}")
        # in range but absent is not a 400 (so the check is a range check, not a blanket refusal)
        assert http.get(route.format(**{**GOOD, "subnet_id": str(U32_MAX)})).status_code in (200, 404)


CALL_INTS = {  # the integer arguments of every signed call and the chain type each has
    "transfer": {"amount": "u128"},
    "register_subnet": {"min_stake": "u128", "max_stake": "u128", "max_cost": "u128"},
    "activate_subnet": {"subnet_id": "u32"},
    "register_subnet_node": {"subnet_id": "u32", "stake": "u128", "max_burn": "u128"},
    "remove_subnet_node": {"subnet_id": "u32", "node_id": "u32"},
    "update_peer_info": {"subnet_id": "u32", "node_id": "u32"},
    "add_stake": {"subnet_id": "u32", "node_id": "u32", "amount": "u128"},
    "remove_stake": {"subnet_id": "u32", "amount": "u128"},
    "propose_attestation": {"subnet_id": "u32"},
    "attest": {"subnet_id": "u32"},
    "add_to_delegate_stake": {"subnet_id": "u32", "amount": "u128"},
    "remove_delegate_stake": {"subnet_id": "u32", "amount": "u128"},
}
OUT_OF_RANGE = {"u32": [2**32, 2**63, 2**64, -1], "u128": [2**128, 2**256, -1]}
NOT_INTS = [1.5, "abc", "1" * 90, True, [1], {"a": 1}, None]


def _valid_args(call: str) -> dict:
    key = dev_accounts(2)[1]
    base = {"to": key.address, "hotkey": key.address, "peer_id": "12D3KooWabc", "name": "r", "data": []}
    return {**base, **dict.fromkeys(CALL_INTS[call], 1)}


def test_bad_transaction_arguments_are_400(devnet):
    chain_id = httpx.get(devnet.url + "/chain", timeout=10).json()["chain_id"]
    signer, nonce = AccountKey.generate(), itertools.count(1)
    with httpx.Client(base_url=devnet.url, timeout=10) as http:

        def post(call: str, args: dict) -> httpx.Response:
            body, sig = sign_tx(signer, chain_id, call, args, next(nonce))
            return http.post("/tx", json={"body": body.decode(), "signature": sig.hex()})

        for call, ints in CALL_INTS.items():
            for name, kind in ints.items():
                for value in OUT_OF_RANGE[kind] + [str(v) for v in OUT_OF_RANGE[kind]] + NOT_INTS:
                    _assert_400(post(call, {**_valid_args(call), name: value}), f"{call}({name}={value!r})")
        entry = {"node_id": 1, "score": "1"}
        for field, value in [("node_id", 2**32), ("node_id", 2**64), ("score", str(2**128)), ("score", -1)]:
            r = post("propose_attestation", {"subnet_id": 1, "data": [{**entry, field: value}]})
            _assert_400(r, f"propose_attestation data {field}={value}")
        # the nonce is a u32 too; a huge one must not reach SQLite
        for bad_nonce in (2**32, 2**63, 2**64, 2**200):
            body, sig = sign_tx(signer, chain_id, "transfer", {"to": signer.address, "amount": "1"}, bad_nonce)
            _assert_400(http.post("/tx", json={"body": body.decode(), "signature": sig.hex()}), f"nonce {bad_nonce}")
        # a deeply nested body or envelope is a 400, not a RecursionError
        deep = canonical_json({"chain": chain_id, "call": "transfer", "signer": signer.address, "nonce": 1,
                               "args": {}})[:-1] + b',"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"  # fmt: skip
        sig = signer.sign(TX_DOMAIN + deep)
        _assert_400(http.post("/tx", json={"body": deep.decode(), "signature": sig.hex()}), "deep body")
        raw = b'{"body":' + b"[" * 100_000 + b"]" * 100_000 + b',"signature":"00"}'
        _assert_400(http.post("/tx", content=raw, headers={"content-type": "application/json"}), "deep envelope")
