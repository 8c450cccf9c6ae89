"""Accountable serving, pure rules: step receipts, the input chain, evidence bodies and their verdict.

A hoster signs, for every inference step it answers, a *receipt*: the canonical bytes of
`(peer id, model, epoch, blocks [start, end), position, length, input chain, output hash)`.
The *input chain* commits to the whole input prefix of the session without the hoster (or
a checker) needing the step segmentation: per position `k`,
`c_{k+1} = sha256(c_k || u32be(k) || row_k)` with `row_k` the little-endian bytes of
`x[:, k, :]` and `c_0 = sha256(domain || dtype || u32be(batch) || u32be(hidden))`. A rollback
to position `p` simply continues from `c_p`, so a receipt covers exactly the effective input
rows `[0, position + length)` the output depends on (the blocks are causal).

*Evidence* is a receipt plus that input prefix and the signed output: anyone can recompute
the blocks on the prefix and compare. Signatures are checked by the caller (this package
has no keys); everything here is deterministic and does no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
from dataclasses import dataclass

import numpy as np
import torch

from consensus.encoding import EncodingError, decode_tensor, encode_tensor, tensor_parts, tensor_to_float64

RECEIPT_DOMAIN = b"mesh-node/receipt/v1\0"
CHAIN_DOMAIN = b"mesh-node/receipt-input/v1\0"
EVIDENCE_VERSION = 1
MAX_MODEL_LEN = 256
MAX_PEER_ID_LEN = 128
MAX_POSITIONS = 1 << 20
# A recomputed output farther than this (relative L2) from the signed one is a lie. Honest
# hosters differ by ~1e-6 (float32 kernels, batch sizes, --compile), a 1% alteration by 1e-2.
EVIDENCE_TOLERANCE = 5e-3
# Evidence bodies are bounded (they travel through the DHT in parts and every validator
# recomputes them): at most this many input elements (batch x positions x hidden).
MAX_EVIDENCE_ELEMENTS = 64 * 1024
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


class EvidenceError(ValueError):
    """Evidence (or a receipt) is malformed, out of bounds or inconsistent; the reason is the message."""


# ---------------------------------------------------------------------------- the input chain

def chain_seed(dtype: torch.dtype, batch: int, hidden: int) -> bytes:
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        raise EvidenceError(f"dtype {dtype} is not allowed")
    return hashlib.sha256(CHAIN_DOMAIN + name.encode() + struct.pack(">II", batch, hidden)).digest()


def _rows(x: torch.Tensor) -> np.ndarray:
    """Little-endian `x[:, k, :]` for every k as one C-contiguous byte array `[positions, row bytes]`
    (bfloat16 as its raw 16-bit pattern); a row is hashed straight from it, no copy per row."""
    x = x.detach().to("cpu")
    arr = x.view(torch.int16).numpy() if x.dtype == torch.bfloat16 else x.numpy()
    le = {torch.float32: "<f4", torch.float16: "<f2", torch.bfloat16: "<i2"}[x.dtype]
    arr = np.ascontiguousarray(np.swapaxes(arr, 0, 1)).astype(le, copy=False)  # [positions, batch, hidden]
    return arr.reshape(arr.shape[0], -1).view(np.uint8)


def extend_chain(states: bytearray, x: torch.Tensor, position: int) -> None:
    """Rows of `x` `[batch, n, hidden]` at positions `position..`: `states` holds the chain states
    `c_0..c_m` (32 bytes each, `c_0` the seed); it is cut to `c_0..c_position` (a rollback) and
    one state per row is appended: `c_{k+1} = sha256(c_k || u32 BE k || row k)`."""
    have = len(states) // 32 - 1
    if not 0 <= position <= have:
        raise EvidenceError(f"position {position} is beyond the chained prefix ({have})")
    del states[32 * (position + 1):]
    c = bytes(states[-32:])
    sha256, pack = hashlib.sha256, struct.Struct(">I").pack
    for k, row in enumerate(_rows(x), start=position):
        h = sha256(c)
        h.update(pack(k))
        h.update(row)
        c = h.digest()
        states += c


def chain_state(states: bytearray, position: int) -> bytes:
    """`c_position` (the chain after positions `[0, position)`)."""
    return bytes(states[32 * position:32 * position + 32])


def chain_of(prefix: torch.Tensor) -> bytes:
    """The input chain state after all positions of `prefix` `[batch, P, hidden]`."""
    states = bytearray(chain_seed(prefix.dtype, prefix.shape[0], prefix.shape[2]))
    extend_chain(states, prefix, 0)
    return bytes(states[-32:])


def output_hash(out: torch.Tensor) -> bytes:
    """sha256 of the canonical tensor bytes (`consensus.encoding`) of a step's output (hashed in two
    parts: the same digest without copying a prefill-sized output into one bytes object)."""
    header, data = tensor_parts(out)
    h = hashlib.sha256(header)
    h.update(data.reshape(-1).view(np.uint8))
    return h.digest()


# ---------------------------------------------------------------------------- receipts

@dataclass(frozen=True)
class Receipt:
    """What a hoster signs for one step (see the module docstring); `signature` is Ed25519, 64 bytes."""

    peer_id: str
    model: str
    epoch: int
    start: int
    end: int
    position: int
    length: int
    input_chain: bytes
    output_hash: bytes
    signature: bytes = b""

    def message(self) -> bytes:
        """The signed bytes (canonical, fixed layout)."""
        check_receipt_fields(self)
        peer, model = self.peer_id.encode("ascii"), self.model.encode("utf-8")
        return (RECEIPT_DOMAIN + struct.pack(">H", len(peer)) + peer + struct.pack(">H", len(model)) + model
                + struct.pack(">QIIII", self.epoch, self.start, self.end, self.position, self.length)
                + self.input_chain + self.output_hash)

    def to_payload(self) -> dict:
        return {"peer": self.peer_id, "model": self.model, "epoch": self.epoch, "start": self.start,
                "end": self.end, "position": self.position, "length": self.length,
                "chain": self.input_chain.hex(), "out": self.output_hash.hex(), "sig": self.signature.hex()}

    @classmethod
    def from_payload(cls, obj: object) -> Receipt:
        if not isinstance(obj, dict) or set(obj) != {"peer", "model", "epoch", "start", "end", "position",
                                                     "length", "chain", "out", "sig"}:
            raise EvidenceError("receipt has the wrong fields")
        r = cls(_str(obj, "peer", MAX_PEER_ID_LEN), _str(obj, "model", MAX_MODEL_LEN), _int(obj, "epoch", 1 << 62),
                _int(obj, "start", 1 << 20), _int(obj, "end", 1 << 20), _int(obj, "position", MAX_POSITIONS),
                _int(obj, "length", MAX_POSITIONS), _hex(obj, "chain", 32), _hex(obj, "out", 32), _hex(obj, "sig", 64))
        check_receipt_fields(r)
        return r


def check_receipt_fields(r: Receipt) -> None:
    if not r.peer_id or len(r.peer_id) > MAX_PEER_ID_LEN or not r.peer_id.isascii():
        raise EvidenceError("bad receipt peer id")
    if not r.model or len(r.model.encode("utf-8")) > MAX_MODEL_LEN:
        raise EvidenceError("bad receipt model")
    if not (0 <= r.start < r.end <= 1 << 20) or r.length < 1 or r.position + r.length > MAX_POSITIONS:
        raise EvidenceError("bad receipt block range or positions")
    if not 0 <= r.epoch < 1 << 62 or len(r.input_chain) != 32 or len(r.output_hash) != 32:
        raise EvidenceError("bad receipt epoch or hashes")


# ---------------------------------------------------------------------------- evidence bodies

@dataclass(frozen=True)
class Evidence:
    """A signed receipt, the input prefix `[batch, position + length, hidden]` and the signed output."""

    receipt: Receipt
    prefix: torch.Tensor
    output: torch.Tensor


def encode_evidence(ev: Evidence) -> bytes:
    """Canonical JSON bytes of an evidence body (sorted keys, tensors as base64 of canonical bytes)."""
    body = {"v": EVIDENCE_VERSION, "receipt": ev.receipt.to_payload(),
            "prefix": base64.b64encode(encode_tensor(ev.prefix)).decode(),
            "output": base64.b64encode(encode_tensor(ev.output)).decode()}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def evidence_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_evidence(data: bytes, *, max_bytes: int) -> Evidence:
    """Parse and check an evidence body: bounded, canonical, and self-consistent (chain and output
    hash match the receipt). The signature is NOT checked here (the caller holds the key code)."""
    if len(data) > max_bytes:
        raise EvidenceError(f"evidence of {len(data)} bytes exceeds {max_bytes}")
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise EvidenceError("evidence is not JSON") from None
    if not isinstance(obj, dict) or set(obj) != {"v", "receipt", "prefix", "output"} or obj["v"] != EVIDENCE_VERSION:
        raise EvidenceError("evidence has the wrong fields or version")
    receipt = Receipt.from_payload(obj["receipt"])
    total = receipt.position + receipt.length
    try:
        prefix = decode_tensor(_b64(obj, "prefix"), max_elements=MAX_EVIDENCE_ELEMENTS)
        output = decode_tensor(_b64(obj, "output"), max_elements=MAX_EVIDENCE_ELEMENTS)
    except EncodingError as e:
        raise EvidenceError(f"bad evidence tensor: {e}") from None
    if prefix.dim() != 3 or prefix.shape[1] != total or prefix.shape[0] < 1:
        raise EvidenceError(f"prefix of shape {list(prefix.shape)} does not cover positions [0, {total})")
    if list(output.shape) != [prefix.shape[0], receipt.length, prefix.shape[2]]:
        raise EvidenceError(f"output of shape {list(output.shape)} does not match the receipt")
    ev = Evidence(receipt, prefix, output)
    if json.dumps(obj, sort_keys=True, separators=(",", ":")).encode() != bytes(data) \
            or encode_evidence(ev) != bytes(data):
        raise EvidenceError("evidence is not in canonical encoding")
    if chain_of(prefix) != receipt.input_chain:
        raise EvidenceError("the prefix does not match the receipt's input chain")
    if output_hash(output) != receipt.output_hash:
        raise EvidenceError("the output does not match the receipt's output hash")
    return ev


def relative_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / (||b|| + 1e-8) in float64 (b is the reference); inf for non-finite or shape mismatch."""
    if a.shape != b.shape:
        return float("inf")
    x, y = tensor_to_float64(a), tensor_to_float64(b)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("inf")
    return float(np.linalg.norm(x - y) / (np.linalg.norm(y) + 1e-8))


def is_dishonest(ev: Evidence, recomputed: torch.Tensor, tolerance: float = EVIDENCE_TOLERANCE) -> bool:
    """`recomputed` = blocks [start, end) on the prefix, positions `[position, position + length)`."""
    return relative_distance(ev.output, recomputed) > tolerance


# ---------------------------------------------------------------------------- field helpers

def _str(obj: dict, name: str, max_len: int) -> str:
    v = obj[name]
    if not isinstance(v, str) or not v or len(v) > max_len:
        raise EvidenceError(f"{name} must be a non-empty string of at most {max_len} characters")
    return v


def _int(obj: dict, name: str, hi: int) -> int:
    v = obj[name]
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= hi:
        raise EvidenceError(f"{name} must be an integer in [0, {hi}]")
    return v


def _hex(obj: dict, name: str, size: int | None) -> bytes:
    v = obj[name]
    if not isinstance(v, str) or (size is not None and len(v) != 2 * size):
        raise EvidenceError(f"{name} must be {'' if size is None else size} hex bytes")
    try:
        return bytes.fromhex(v)
    except ValueError:
        raise EvidenceError(f"{name} is not hex") from None


def _b64(obj: dict, name: str) -> bytes:
    v = obj[name]
    if not isinstance(v, str) or len(v) > 4 * (4 * MAX_EVIDENCE_ELEMENTS + 64) // 3 + 4:
        raise EvidenceError(f"{name} must be a bounded base64 string")
    try:
        return base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise EvidenceError(f"{name} is not base64") from None


def apply_evidence(fixed: dict[str, int], guilty: set[str] | frozenset[str]) -> dict[str, int]:
    """Hoster fixed-point scores with every hoster proven dishonest by evidence set to 0."""
    return {peer: (0 if peer in guilty else score) for peer, score in fixed.items()}
