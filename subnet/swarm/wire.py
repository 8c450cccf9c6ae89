"""Tensors and metadata on the wire, checked before anything is decoded.

Tensors use hivemind's protobuf format (`runtime_pb2.Tensor`, CompressionType.NONE; the
bytes are what `serialize_torch_tensor` writes, built directly because it is faster).
Nothing from the peer is trusted: `decode_tensor` checks compression, dtype (whitelist),
shape (rank, limits) and the exact byte length before reading the buffer. Metadata is UTF-8
JSON objects with a size bound.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import hivemind.compression.base as _hm_base
import numpy as np
import torch
from hivemind.proto import runtime_pb2

# hivemind's legacy mode ships bfloat16 as float32 (twice the bytes); send bf16 as 2-byte data.
_hm_base.USE_LEGACY_BFLOAT16 = False

WIRE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
ITEM_SIZE = {"float32": 4, "bfloat16": 2, "float16": 2}
MAX_METADATA_BYTES = 64 * 1024
MAX_TENSOR_BYTES = 256 * 1024 * 1024  # absolute cap; callers pass tighter limits


class WireError(ValueError):
    """Bad input from a peer; `type` is the protocol error type (bad_request, too_large, ...)."""

    def __init__(self, type: str, message: str):
        super().__init__(message)
        self.type = type
        self.message = message


# Raw little-endian layouts of the wire dtypes: bfloat16 has no numpy dtype, so it travels
# (and is read back) through its 16-bit pattern, exactly like hivemind's non-legacy bf16.
_RAW_VIEW = {"float32": (torch.float32, np.float32), "float16": (torch.float16, np.float16),
             "bfloat16": (torch.int16, np.int16)}


def encode_tensor(tensor: torch.Tensor) -> runtime_pb2.Tensor:
    """Serialize a CPU tensor of a wire dtype (no compression).

    Byte-for-byte what hivemind's `serialize_torch_tensor` produces for CompressionType.NONE,
    built directly (about 3x faster; this runs twice per hop per token).
    """
    name = str(tensor.dtype).replace("torch.", "")
    if name not in WIRE_DTYPES:
        raise WireError("bad_request", f"dtype {name} cannot be sent")
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    raw = tensor.contiguous().view(_RAW_VIEW[name][0]).numpy()
    return runtime_pb2.Tensor(buffer=raw.tobytes(), size=list(tensor.shape), requires_grad=False, dtype=name,
                              compression=runtime_pb2.CompressionType.NONE)


def decode_tensor(
    msg: runtime_pb2.Tensor,
    *,
    ndim: int | None = None,
    shape: Sequence[int | None] | None = None,
    dtypes: Sequence[str] | None = None,
    max_bytes: int = MAX_TENSOR_BYTES,
) -> torch.Tensor:
    """Check a wire tensor, then decode it.

    `shape` may hold None for free dimensions; `dtypes` restricts the whitelist further.
    Raises WireError (`bad_request` or `too_large`) before touching the buffer otherwise.
    """
    if not isinstance(msg, runtime_pb2.Tensor):
        raise WireError("bad_request", "not a tensor message")
    if msg.compression != runtime_pb2.CompressionType.NONE:
        raise WireError("bad_request", "compressed tensors are not accepted")
    if msg.chunks not in (0, 1):
        raise WireError("bad_request", "chunked tensors are not accepted")
    allowed = dtypes if dtypes is not None else tuple(WIRE_DTYPES)
    if msg.dtype not in WIRE_DTYPES or msg.dtype not in allowed:
        raise WireError("bad_request", f"dtype {msg.dtype!r} not accepted (allowed: {', '.join(allowed)})")
    size = list(msg.size)
    if ndim is not None and len(size) != ndim:
        raise WireError("bad_request", f"expected a {ndim}-d tensor, got shape {size}")
    if shape is not None:
        if len(size) != len(shape):
            raise WireError("bad_request", f"expected shape {list(shape)}, got {size}")
        for got, want in zip(size, shape):
            if want is not None and got != want:
                raise WireError("bad_request", f"expected shape {list(shape)}, got {size}")
    if any(d <= 0 for d in size):
        raise WireError("bad_request", f"empty dimension in shape {size}")
    nbytes = math.prod(size) * ITEM_SIZE[msg.dtype]
    if nbytes > max_bytes:
        raise WireError("too_large", f"tensor of {nbytes} bytes exceeds the limit of {max_bytes}")
    if len(msg.buffer) != nbytes:
        raise WireError("bad_request", f"buffer has {len(msg.buffer)} bytes, shape {size} x {msg.dtype} needs {nbytes}")
    if msg.requires_grad:
        raise WireError("bad_request", "requires_grad tensors are not accepted")
    flat = torch.from_numpy(np.frombuffer(msg.buffer, dtype=_RAW_VIEW[msg.dtype][1]).copy())  # own, writable
    return flat.view(WIRE_DTYPES[msg.dtype]).view(size)


def encode_metadata(meta: dict[str, Any]) -> bytes:
    try:
        data = json.dumps(meta, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        raise WireError("bad_request", f"metadata is not JSON-serializable: {e}") from None
    if len(data) > MAX_METADATA_BYTES:
        raise WireError("too_large", f"metadata of {len(data)} bytes exceeds {MAX_METADATA_BYTES}")
    return data


def decode_metadata(data: bytes, *, max_bytes: int = MAX_METADATA_BYTES) -> dict[str, Any]:
    """Parse a JSON object (empty bytes -> {}); bounded size, no NaN/Infinity."""
    if not data:
        return {}
    if len(data) > max_bytes:
        raise WireError("too_large", f"metadata of {len(data)} bytes exceeds {max_bytes}")
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise WireError("bad_request", f"metadata is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise WireError("bad_request", "metadata must be a JSON object")
    return obj


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def get_int(meta: dict, key: str, *, lo: int = 0, hi: int = 2**31, default: int | None = None) -> int:
    """An integer field in [lo, hi] (bools rejected), or `default` when absent and not None."""
    value = meta.get(key, default)
    if value is None:
        raise WireError("bad_request", f"missing integer field {key!r}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireError("bad_request", f"field {key!r} must be an integer")
    if not lo <= value <= hi:
        raise WireError("bad_request", f"field {key!r}={value} outside [{lo}, {hi}]")
    return value


def get_float(meta: dict, key: str, *, lo: float, hi: float, default: float | None = None) -> float:
    """A finite number in [lo, hi] (bools rejected), or `default` when absent and not None."""
    value = meta.get(key, default)
    if value is None:
        raise WireError("bad_request", f"missing number field {key!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise WireError("bad_request", f"field {key!r} must be a finite number")
    if not lo <= value <= hi:
        raise WireError("bad_request", f"field {key!r}={value} outside [{lo}, {hi}]")
    return float(value)


def error_metadata(type: str, message: str) -> bytes:
    return encode_metadata({"error": {"type": type, "message": message[:2000]}})


def error_response(type: str, message: str) -> runtime_pb2.ExpertResponse:
    """The protocol's typed error: metadata {"error": {"type", "message"}}, no tensors."""
    return runtime_pb2.ExpertResponse(metadata=error_metadata(type, message))


def response_error(resp: runtime_pb2.ExpertResponse) -> tuple[str, str] | None:
    """(type, message) if `resp` is an error response, else None (client side helper)."""
    if not resp.metadata:
        return None
    try:
        meta = decode_metadata(resp.metadata)
    except WireError:
        return ("bad_request", "unparseable response metadata")
    err = meta.get("error")
    if isinstance(err, dict):
        return (str(err.get("type", "internal")), str(err.get("message", "")))
    return None
