"""Wire checks happen before hivemind's decoder trusts dtype/size."""

from __future__ import annotations

import math

import hivemind.compression.base as hm_base
import pytest
import torch
from hivemind.proto import runtime_pb2

from subnet.swarm import wire


@pytest.mark.parametrize("dtype,size", [(torch.float32, 4), (torch.bfloat16, 2), (torch.float16, 2)])
def test_roundtrip(dtype, size):
    t = torch.randn(2, 3, 8).to(dtype)
    msg = wire.encode_tensor(t)
    assert len(msg.buffer) == t.numel() * size  # bfloat16 is not widened to float32
    out = wire.decode_tensor(msg, shape=[2, None, 8])
    assert out.dtype == dtype and torch.equal(out, t)
    assert hm_base.USE_LEGACY_BFLOAT16 is False


def _msg(**kw):
    base = dict(buffer=b"\0" * 24, size=[1, 2, 3], dtype="float32")
    base.update(kw)
    return runtime_pb2.Tensor(**base)


@pytest.mark.parametrize("msg,kind,match", [
    (_msg(dtype="int64", buffer=b"\0" * 48), "bad_request", "dtype"),
    (_msg(dtype="object"), "bad_request", "dtype"),
    (_msg(buffer=b"\0" * 23), "bad_request", "bytes"),
    (_msg(buffer=b"\0" * 4000), "bad_request", "bytes"),
    (_msg(size=[2, 3]), "bad_request", "shape"),
    (_msg(size=[1, 0, 3], buffer=b""), "bad_request", "empty"),
    (_msg(compression=runtime_pb2.CompressionType.FLOAT16), "bad_request", "compressed"),
    (_msg(size=[1 << 20, 1 << 20, 3], buffer=b""), "too_large", "exceeds"),
])
def test_rejects_before_decoding(msg, kind, match):
    with pytest.raises(wire.WireError, match=match) as e:
        wire.decode_tensor(msg, ndim=3, shape=[None, None, 3], max_bytes=1 << 20)
    assert e.value.type == kind


def test_metadata_bounds():
    assert wire.decode_metadata(wire.encode_metadata({"a": 1})) == {"a": 1}
    assert wire.decode_metadata(b"") == {}
    for bad in (b"[1]", b"{", b'{"x": NaN}', b"\xff\xfe"):
        with pytest.raises(wire.WireError) as e:
            wire.decode_metadata(bad)
        assert e.value.type == "bad_request"
    with pytest.raises(wire.WireError) as e:
        wire.decode_metadata(b'{"a":"' + b"x" * (70 * 1024) + b'"}')
    assert e.value.type == "too_large"
    with pytest.raises(wire.WireError):
        wire.encode_metadata({"x": math.nan})
    with pytest.raises(wire.WireError):
        wire.get_int({"p": True}, "p")
    with pytest.raises(wire.WireError):
        wire.get_int({"p": -1}, "p")
    assert wire.response_error(wire.error_response("busy", "full")) == ("busy", "full")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_encoding_is_hivemind_compatible_both_ways(dtype):
    """The direct codec writes hivemind's exact bytes and reads what hivemind writes."""
    from hivemind.compression import deserialize_torch_tensor, serialize_torch_tensor

    x = torch.randn(3, 5, 8).to(dtype)[:, ::2]  # non-contiguous input
    ours = wire.encode_tensor(x)
    assert ours == serialize_torch_tensor(x.contiguous())
    assert torch.equal(deserialize_torch_tensor(ours), x)
    back = wire.decode_tensor(serialize_torch_tensor(x.contiguous()))
    assert back.dtype == dtype and torch.equal(back, x)
    back += 1  # decoded tensors own writable memory (never a view of the message buffer)
    assert torch.equal(wire.decode_tensor(ours), x)
