"""Canonical, versioned bytes for what nodes hash and sign: tensors and score sets.

Tensor layout (version 1)::

    u8 version | u8 len(dtype) | dtype name (ascii) | u8 ndim | ndim x u32 LE dims | data (little-endian)

Decoding never trusts the header: the dtype must be whitelisted and the byte length must
equal what dtype and shape imply, within explicit bounds. (hivemind's tensor decoding
trusts dtype/size from the wire; this one does not.) Score sets are canonical JSON with
sorted keys and integer scores only.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

TENSOR_VERSION = 1
SCORE_SET_VERSION = 1
MAX_NDIM = 4
MAX_ELEMENTS = 1 << 24
MAX_DIM = 1 << 20
SCORE_MAX = 10**18  # scores are fixed point: floor(score * 1e18), score in [0, 1]
MAX_SCORE_ENTRIES = 4096
MAX_PEER_ID_LEN = 128

# name -> (torch dtype, little-endian numpy view dtype)
_DTYPES: dict[str, tuple[torch.dtype, str]] = {
    "float32": (torch.float32, "<f4"),
    "float16": (torch.float16, "<f2"),
    "bfloat16": (torch.bfloat16, "<i2"),  # raw 16-bit pattern, viewed back as bfloat16
}
_NAME_OF = {v[0]: k for k, v in _DTYPES.items()}


class EncodingError(ValueError):
    """Bytes are not a valid canonical encoding (or exceed the bounds)."""


def encode_tensor(t: torch.Tensor) -> bytes:
    """Canonical bytes of a CPU tensor of a whitelisted dtype."""
    header, data = tensor_parts(t)
    return header + data.tobytes()


def tensor_parts(t: torch.Tensor) -> tuple[bytes, np.ndarray]:
    """`encode_tensor(t)` in two parts, header bytes and a C-contiguous little-endian array of the
    data, for hashing without the copy into one bytes object (`sha256(header); update(data)`)."""
    name = _NAME_OF.get(t.dtype)
    if name is None:
        raise EncodingError(f"dtype {t.dtype} is not allowed")
    if t.dim() > MAX_NDIM or t.numel() > MAX_ELEMENTS or any(d > MAX_DIM for d in t.shape):
        raise EncodingError(f"tensor of shape {tuple(t.shape)} exceeds the bounds")
    t = t.detach().to("cpu").contiguous()
    le = _DTYPES[name][1]
    arr = t.view(torch.int16).numpy() if name == "bfloat16" else t.numpy()
    data = np.ascontiguousarray(arr).astype(le, copy=False)
    header = bytes([TENSOR_VERSION, len(name)]) + name.encode() + bytes([t.dim()])
    header += b"".join(struct.pack("<I", d) for d in t.shape)
    return header, data


def decode_tensor(data: bytes, *, max_elements: int = MAX_ELEMENTS, expected_shape: tuple[int, ...] | None = None
                  ) -> torch.Tensor:
    """Strict inverse of `encode_tensor`; raises EncodingError on any defect."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise EncodingError("tensor data is not bytes")
    data = bytes(data)
    if len(data) < 3:
        raise EncodingError("tensor bytes too short")
    if data[0] != TENSOR_VERSION:
        raise EncodingError(f"unsupported tensor encoding version {data[0]}")
    name_len = data[1]
    pos = 2 + name_len
    if len(data) < pos + 1:
        raise EncodingError("truncated tensor header")
    try:
        name = data[2:pos].decode("ascii")
    except UnicodeDecodeError:
        raise EncodingError("dtype name is not ascii") from None
    if name not in _DTYPES:
        raise EncodingError(f"dtype {name!r} is not allowed")
    ndim = data[pos]
    pos += 1
    if ndim > MAX_NDIM:
        raise EncodingError(f"too many dimensions ({ndim})")
    if len(data) < pos + 4 * ndim:
        raise EncodingError("truncated tensor shape")
    shape = tuple(struct.unpack_from(f"<{ndim}I", data, pos)) if ndim else ()
    pos += 4 * ndim
    numel = 1
    for d in shape:
        if d > MAX_DIM:
            raise EncodingError(f"dimension {d} too large")
        numel *= d
    if numel > min(max_elements, MAX_ELEMENTS):
        raise EncodingError(f"tensor of {numel} elements exceeds the bound")
    if expected_shape is not None and shape != tuple(expected_shape):
        raise EncodingError(f"tensor shape {shape} != expected {tuple(expected_shape)}")
    torch_dtype, le = _DTYPES[name]
    itemsize = np.dtype(le).itemsize
    if len(data) - pos != numel * itemsize:
        raise EncodingError(f"tensor data has {len(data) - pos} bytes, expected {numel * itemsize}")
    arr = np.frombuffer(data, dtype=le, count=numel, offset=pos).astype(np.dtype(le).newbyteorder("="))
    t = torch.from_numpy(arr.reshape(shape))
    return t.view(torch.bfloat16) if name == "bfloat16" else t


def tensor_to_float64(t: torch.Tensor) -> np.ndarray:
    """Exact widening to float64 numpy (all whitelisted dtypes embed exactly in float64)."""
    return t.detach().to("cpu").to(torch.float64).contiguous().numpy()


# ---- hoster outputs ---------------------------------------------------------------

_OUTPUT_DOMAIN = b"mesh-node/hoster-output/v1\x00"


def encode_block_outputs(subnet_id: int, epoch: int, peer_id: str, outputs: Mapping[int, bytes]) -> bytes:
    """What a hoster commits to: its canonical tensor bytes per block, bound to (subnet, epoch, signer).

    Binding the signer makes a copied commit useless: the same outputs under another peer id
    hash differently, so a copycat cannot reuse someone else's commit and reveal.
    """
    pid = peer_id.encode("ascii")
    if not pid or len(pid) > MAX_PEER_ID_LEN:
        raise EncodingError("bad peer id")
    parts = [
        _OUTPUT_DOMAIN,
        struct.pack(">QQ", subnet_id, epoch),
        struct.pack(">H", len(pid)),
        pid,
        struct.pack(">I", len(outputs)),
    ]
    for block in sorted(outputs):
        blob = outputs[block]
        parts.append(struct.pack(">II", block, len(blob)))
        parts.append(bytes(blob))
    return b"".join(parts)


# ---- score sets --------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreSet:
    """A validator's hoster scores of one epoch: peer id -> floor(score * 1e18)."""

    subnet_id: int
    epoch: int
    signer: str
    scores: tuple[tuple[str, int], ...]  # sorted by peer id

    def as_dict(self) -> dict[str, int]:
        return dict(self.scores)


def make_score_set(subnet_id: int, epoch: int, signer: str, scores: Mapping[str, int]) -> ScoreSet:
    check_scores(scores)
    return ScoreSet(subnet_id, epoch, signer, tuple(sorted(scores.items())))


def check_scores(scores: Mapping[str, int]) -> None:
    if not isinstance(scores, Mapping) or len(scores) > MAX_SCORE_ENTRIES:
        raise EncodingError("score set must be a mapping of bounded size")
    for k, v in scores.items():
        if not isinstance(k, str) or not (0 < len(k) <= MAX_PEER_ID_LEN) or not k.isascii():
            raise EncodingError(f"bad score key {k!r}")
        if type(v) is not int or not (0 <= v <= SCORE_MAX):
            raise EncodingError(f"score for {k} must be an int in [0, 1e18]")


def encode_score_set(s: ScoreSet) -> bytes:
    """Canonical JSON: sorted keys, integers only, no whitespace."""
    obj = {
        "v": SCORE_SET_VERSION,
        "subnet": s.subnet_id,
        "epoch": s.epoch,
        "signer": s.signer,
        "scores": {k: v for k, v in s.scores},
    }
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def decode_score_set(data: bytes) -> ScoreSet:
    """Strict inverse of `encode_score_set` (re-encoding must give the same bytes)."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > 64 * MAX_SCORE_ENTRIES:
        raise EncodingError("score set bytes missing or too large")
    try:
        obj = json.loads(data, parse_float=_reject_float, parse_constant=_reject_float)
    except (ValueError, UnicodeDecodeError) as e:
        raise EncodingError(f"score set is not JSON: {e}") from None
    s = score_set_from_obj(obj)
    if encode_score_set(s) != bytes(data):
        raise EncodingError("score set bytes are not canonical")
    return s


def score_set_from_obj(obj: object) -> ScoreSet:
    if not isinstance(obj, dict) or set(obj) != {"v", "subnet", "epoch", "signer", "scores"}:
        raise EncodingError("score set has the wrong fields")
    if obj["v"] != SCORE_SET_VERSION:
        raise EncodingError("unsupported score set version")
    if type(obj["subnet"]) is not int or type(obj["epoch"]) is not int or not isinstance(obj["signer"], str):
        raise EncodingError("score set header has wrong types")
    if not isinstance(obj["scores"], dict):
        raise EncodingError("scores must be an object")
    return make_score_set(obj["subnet"], obj["epoch"], obj["signer"], obj["scores"])


def _reject_float(value: str):
    raise ValueError(f"non-integer number {value!r} in score set")
