"""Pure evidence rules: the input chain (rollbacks), receipts, evidence bodies and their verdict."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings, strategies as st

from consensus.evidence import (
    EVIDENCE_TOLERANCE,
    Evidence,
    EvidenceError,
    Receipt,
    apply_evidence,
    chain_of,
    chain_seed,
    chain_state,
    decode_evidence,
    encode_evidence,
    extend_chain,
    is_dishonest,
    output_hash,
)

H = 8


def _receipt(prefix: torch.Tensor, out: torch.Tensor, at: int, **kw) -> Receipt:
    fields = dict(peer_id="12D3KooWpeer", model="m", epoch=3, start=0, end=4, position=at,
                  length=prefix.shape[1] - at, input_chain=chain_of(prefix), output_hash=output_hash(out),
                  signature=bytes(64))
    fields.update(kw)
    return Receipt(**fields)


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(0, 12), st.integers(1, 5)), min_size=1, max_size=8),
       seed=st.integers(0, 2**31), dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_the_chain_depends_only_on_the_effective_prefix(steps, seed, dtype):
    """Any segmentation into steps, with rollbacks, gives the chain of the rows that remain."""
    g = torch.Generator().manual_seed(seed)
    states = bytearray(chain_seed(dtype, 2, H))
    effective = torch.zeros(2, 0, H, dtype=dtype)
    for want, n in steps:
        position = min(want, effective.shape[1])
        x = torch.randn(2, n, H, generator=g).to(dtype)
        extend_chain(states, x, position)
        effective = torch.cat([effective[:, :position], x], dim=1)
        assert chain_state(states, effective.shape[1]) == chain_of(effective)
    assert len(states) == 32 * (effective.shape[1] + 1)


def test_a_chain_cannot_skip_positions():
    states = bytearray(chain_seed(torch.float32, 1, H))
    with pytest.raises(EvidenceError):
        extend_chain(states, torch.zeros(1, 2, H), 1)


def test_one_changed_row_changes_the_chain():
    x = torch.randn(1, 6, H)
    y = x.clone()
    y[0, 3, 5] = torch.nextafter(y[0, 3, 5], torch.tensor(1e9))
    assert chain_of(x) != chain_of(y)
    assert chain_of(x[:, :3]) == chain_of(y[:, :3])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_hashes_follow_their_definitions(dtype):
    """The digests other nodes recompute: the output hash is sha256 of the canonical tensor bytes, the
    chain c_{k+1} = sha256(c_k || u32 BE k || row k, little-endian, batch-major); written out here
    independently of the (copy-free) implementation, so a faster hashing cannot change them."""
    import hashlib
    import struct

    from consensus.encoding import encode_tensor

    x = torch.randn(3, 5, H).to(dtype).transpose(0, 1).contiguous().transpose(0, 1)  # non-contiguous input
    assert output_hash(x) == hashlib.sha256(encode_tensor(x)).digest()
    raw = x.contiguous().view(torch.int16) if dtype == torch.bfloat16 else x.contiguous()
    c = chain_seed(dtype, 3, H)
    for k in range(5):
        row = b"".join(raw[b, k].numpy().astype(raw.numpy().dtype.newbyteorder("<")).tobytes() for b in range(3))
        c = hashlib.sha256(c + struct.pack(">I", k) + row).digest()
    assert chain_of(x) == c


def test_receipt_message_is_canonical_and_bound_to_every_field():
    prefix, out = torch.randn(1, 5, H), torch.randn(1, 2, H)
    r = _receipt(prefix, out, 3)
    assert Receipt.from_payload(r.to_payload()) == r
    msgs = {r.message()}
    for change in (dict(peer_id="12D3KooWother"), dict(epoch=4), dict(start=1), dict(end=5), dict(position=2, length=3),
                   dict(model="m2"), dict(output_hash=bytes(32))):
        msgs.add(_receipt(prefix, out, 3, **change).message())
    assert len(msgs) == 8
    with pytest.raises(EvidenceError):
        Receipt.from_payload({**r.to_payload(), "extra": 1})
    with pytest.raises(EvidenceError):
        Receipt.from_payload({**r.to_payload(), "start": 4})  # start >= end
    with pytest.raises(EvidenceError):
        Receipt.from_payload({**r.to_payload(), "epoch": True})


def test_evidence_round_trip_and_verdict():
    prefix = torch.randn(1, 6, H)
    honest = prefix[:, 4:] * 2
    ev = Evidence(_receipt(prefix, honest, 4), prefix, honest)
    back = decode_evidence(encode_evidence(ev), max_bytes=1 << 20)
    assert torch.equal(back.prefix, prefix) and torch.equal(back.output, honest)
    assert not is_dishonest(back, honest)
    assert not is_dishonest(back, honest * (1 + EVIDENCE_TOLERANCE / 10))
    assert is_dishonest(back, honest * 1.01)
    assert is_dishonest(back, torch.full_like(honest, float("nan")))


@pytest.mark.parametrize("mutate", [
    lambda o: o.update(v=2),
    lambda o: o.pop("output"),
    lambda o: o.update(prefix="@@not base64@@"),
    lambda o: o["receipt"].update(chain="00" * 32),  # prefix no longer matches the chain
    lambda o: o["receipt"].update(out="00" * 32),  # output no longer matches the hash
    lambda o: o["receipt"].update(position=5),  # prefix does not cover the receipt's positions
])
def test_malformed_evidence_is_rejected(mutate):
    prefix = torch.randn(1, 6, H)
    out = prefix[:, 4:] * 2
    obj = json.loads(encode_evidence(Evidence(_receipt(prefix, out, 4), prefix, out)))
    mutate(obj)
    with pytest.raises(EvidenceError):
        decode_evidence(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode(), max_bytes=1 << 20)


def test_non_canonical_or_oversize_evidence_is_rejected():
    prefix = torch.randn(1, 3, H)
    out = prefix[:, 2:]
    data = encode_evidence(Evidence(_receipt(prefix, out, 2), prefix, out))
    with pytest.raises(EvidenceError, match="canonical"):
        decode_evidence(json.dumps(json.loads(data), indent=1).encode(), max_bytes=1 << 20)
    with pytest.raises(EvidenceError, match="exceeds"):
        decode_evidence(data, max_bytes=len(data) - 1)
    for junk in (b"", b"[]", b"\xff\xfe", b'{"v":1}'):
        with pytest.raises(EvidenceError):
            decode_evidence(junk, max_bytes=1 << 20)


@settings(max_examples=50, deadline=None)
@given(fixed=st.dictionaries(st.text(min_size=1, max_size=8), st.integers(0, 10**18), max_size=8),
       guilty=st.sets(st.text(min_size=1, max_size=8), max_size=4))
def test_apply_evidence_zeroes_exactly_the_guilty(fixed, guilty):
    out = apply_evidence(fixed, guilty)
    assert set(out) == set(fixed)
    for peer, score in fixed.items():
        assert out[peer] == (0 if peer in guilty else score)
    assert apply_evidence(fixed, set()) == fixed
