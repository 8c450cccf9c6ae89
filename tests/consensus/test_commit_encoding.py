import struct

import pytest
import torch
from hypothesis import given, settings, strategies as st

from consensus.commit import commitment, new_salt, verify_commitment
from consensus.encoding import (
    EncodingError,
    decode_score_set,
    decode_tensor,
    encode_block_outputs,
    encode_score_set,
    encode_tensor,
    make_score_set,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=4),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**31),
)
def test_tensor_round_trip(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    t = (torch.randn(shape, generator=g) * 100).to(dtype)
    data = encode_tensor(t)
    back = decode_tensor(data)
    assert back.dtype == dtype and tuple(back.shape) == tuple(shape)
    assert torch.equal(back.view(-1).view(torch.int16 if dtype != torch.float32 else torch.int32),
                       t.reshape(-1).view(torch.int16 if dtype != torch.float32 else torch.int32))
    assert encode_tensor(back) == data  # canonical


def test_encoding_is_little_endian_and_versioned():
    data = encode_tensor(torch.tensor([1.0], dtype=torch.float32))
    assert data == bytes([1, 7]) + b"float32" + bytes([1]) + struct.pack("<I", 1) + struct.pack("<f", 1.0)


def _good() -> bytes:
    return encode_tensor(torch.zeros(2, 3))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01",
        bytes([2]) + _good()[1:],  # unknown version
        bytes([1, 7]) + b"float64" + bytes([1]) + struct.pack("<I", 1) + b"\x00" * 8,  # not whitelisted
        bytes([1, 5]) + b"int64" + bytes([1]) + struct.pack("<I", 1) + b"\x00" * 8,
        _good()[:-1],  # truncated data
        _good() + b"\x00",  # trailing bytes
        bytes([1, 7]) + b"float32" + bytes([9]) + b"\x01\x00\x00\x00" * 9,  # too many dims
        bytes([1, 7]) + b"float32" + bytes([2]) + struct.pack("<II", 1 << 20, 1 << 20),  # too many elements
        bytes([1, 7]) + b"float32" + bytes([2]) + struct.pack("<I", 2),  # truncated shape
        bytes([1, 200]) + b"float32",  # name length past the end
        bytes([1, 7]) + b"flo\xffat3" + bytes([0]),  # non-ascii dtype
    ],
)
def test_malformed_tensor_rejected(data):
    with pytest.raises(EncodingError):
        decode_tensor(data)


def test_expected_shape_enforced():
    with pytest.raises(EncodingError, match="expected"):
        decode_tensor(_good(), expected_shape=(3, 2))
    with pytest.raises(EncodingError):
        decode_tensor(_good(), max_elements=5)


def test_unsupported_dtype_refused_on_encode():
    with pytest.raises(EncodingError):
        encode_tensor(torch.zeros(2, dtype=torch.int64))


@settings(max_examples=50, deadline=None)
@given(
    payload=st.binary(max_size=256),
    salt_len=st.integers(16, 64),
    flip=st.integers(0, 255),
)
def test_commit_verify(payload, salt_len, flip):
    salt = new_salt(salt_len)
    c = commitment(salt, payload)
    assert verify_commitment(c, salt, payload)
    assert not verify_commitment(c, salt, payload + b"x")
    other = bytes([salt[0] ^ (flip or 1)]) + salt[1:]
    assert not verify_commitment(c, other, payload)


def test_short_salt_refused():
    with pytest.raises(ValueError):
        new_salt(8)
    with pytest.raises(ValueError):
        commitment(b"x" * 15, b"")
    assert not verify_commitment(b"\x00" * 32, b"x" * 15, b"")
    assert not verify_commitment(b"\x00" * 31, b"x" * 16, b"")


def test_block_outputs_bind_signer_epoch_and_order():
    outs = {1: b"aa", 0: b"bb"}
    a = encode_block_outputs(5, 3, "peerA", outs)
    assert a == encode_block_outputs(5, 3, "peerA", dict(sorted(outs.items())))
    assert a != encode_block_outputs(5, 3, "peerB", outs)
    assert a != encode_block_outputs(5, 4, "peerA", outs)
    assert a != encode_block_outputs(6, 3, "peerA", outs)
    assert a != encode_block_outputs(5, 3, "peerA", {0: b"aa", 1: b"bb"})


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.text("abcdefXYZ123", min_size=1, max_size=12), st.integers(0, 10**18), max_size=20))
def test_score_set_round_trip(scores):
    s = make_score_set(1, 2, "signer", scores)
    data = encode_score_set(s)
    assert decode_score_set(data) == s
    # key order of the input does not matter
    assert encode_score_set(make_score_set(1, 2, "signer", dict(reversed(list(scores.items()))))) == data


@pytest.mark.parametrize(
    "data",
    [
        b'{"epoch":2,"scores":{"a":0.5},"signer":"s","subnet":1,"v":1}',  # float score
        b'{"epoch":2,"scores":{"a":-1},"signer":"s","subnet":1,"v":1}',
        b'{"epoch":2,"scores":{"a":1000000000000000001},"signer":"s","subnet":1,"v":1}',
        b'{"epoch":2,"scores":{"a":NaN},"signer":"s","subnet":1,"v":1}',
        b'{"epoch":2,"scores":{"b":1,"a":2},"signer":"s","subnet":1,"v":1}',  # not canonical
        b'{"epoch": 2,"scores":{},"signer":"s","subnet":1,"v":1}',  # whitespace
        b'{"epoch":2,"scores":{},"signer":"s","subnet":1,"v":2}',
        b'{"epoch":2,"scores":{},"signer":"s","subnet":1}',
        b'{"epoch":2,"scores":{"a":true},"signer":"s","subnet":1,"v":1}',
        b"not json",
    ],
)
def test_malformed_score_set_rejected(data):
    with pytest.raises(EncodingError):
        decode_score_set(data)
