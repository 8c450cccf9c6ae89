"""References in several precision classes, and reading them back per class.

A validator holding the weights can compute the probe blocks not only at its own `--dtype`
but also quantized exactly as an int8 or nf4 hoster does (`load_blocks(..., quant=)`: the same
torchao code on the same weights gives the same numbers up to float rounding), so quantized
hosters are refereed within their own class (consensus.class_scoring).

On the wire (subnet.swarm.epoch_records): the reference commit carries `precision`, the list
of classes in order, and each revealed block blob is the canonical tensor of every class
concatenated in that order. The commitment (`encode_block_outputs` over those blobs) and the
reveal body keep their format; a reader splits each blob into equal parts of the probe
tensor's exact encoded size and decodes each strictly.
"""

from __future__ import annotations

import threading

import torch

from consensus.class_scoring import reference_classes
from consensus.commit import verify_commitment
from consensus.encoding import EncodingError, decode_tensor, encode_block_outputs, encode_tensor
from consensus.precision import CLASSES, DTYPES, precision_class
from consensus.probe import ProbeSpec, probe_input
from subnet.model.blocks import load_blocks, parse_dtype
from subnet.model.quant import check_quant
from subnet.swarm.epoch_records import ConsensusRecordError, decode_b64
from subnet.swarm.records import OpenedRecord
from validator.reference import ReferenceModel, ReferencePublisher
from validator.verify import VALID, _paired


def class_load_args(cls: str, dtype: str = "float32") -> tuple[str, str]:
    """(dtype, quant) that computes class `cls`: a float class is its dtype; a quantized one uses `dtype`."""
    return (cls, "none") if cls in DTYPES else (dtype, cls)


class ClassReferenceModel(ReferenceModel):
    """The model's blocks in each of `classes` (each loaded on first use), outputs float32 per class."""

    def __init__(self, model_path: str, num_blocks: int, classes: list[str] | tuple[str, ...], dtype: str = "float32"):
        super().__init__(model_path, num_blocks, dtype)
        self.classes = tuple(classes)
        for cls in self.classes:
            precision_class(*class_load_args(cls, dtype))  # ValueError for an unknown class
        self._spans: dict[str, torch.nn.Module] = {}
        self._class_lock = threading.Lock()

    def class_outputs(self, spec: ProbeSpec, blocks: list[int]) -> dict[str, dict[int, torch.Tensor]]:
        """{class: {block: block_i(x_i) float32}} for every class, in `classes` order."""
        with self._class_lock:
            out: dict[str, dict[int, torch.Tensor]] = {}
            for cls in self.classes:
                if cls not in self._spans:
                    dtype, quant = class_load_args(cls, self.dtype)
                    self._spans[cls] = load_blocks(self.model_path, 0, self.num_blocks, dtype, progress=False,
                                                   quant=quant, linear_kernel="torch" if quant != "none" else None)
                span = self._spans[cls]
                out[cls] = {}
                for b in blocks:
                    x = probe_input(spec, b).to(span.dtype)
                    with torch.inference_mode():
                        y = span(x, start=b, end=b + 1)
                    out[cls][b] = y.detach().to("cpu", torch.float32).contiguous()
            return out

    def outputs(self, spec: ProbeSpec, blocks: list[int]) -> dict[int, torch.Tensor]:
        return self.class_outputs(spec, blocks)[self.classes[0]]


class ClassReferencePublisher(ReferencePublisher):
    """`ReferencePublisher` whose commit declares its classes and whose blobs hold one tensor per class."""

    model: ClassReferenceModel

    def commit_extra(self) -> dict:
        return {"precision": list(self.model.classes)}

    def encode_outputs(self, spec: ProbeSpec, blocks: list[int]) -> dict[int, bytes]:
        outs = self.model.class_outputs(spec, blocks)
        return {b: b"".join(encode_tensor(outs[cls][b]) for cls in self.model.classes) for b in blocks}


def parse_reference_precisions(text: str) -> list[str]:
    """`float32,int8` -> ["float32", "int8"]: known classes, no repeats (ValueError naming the problem)."""
    classes = [c.strip().lower() for c in text.split(",") if c.strip()]
    bad = [c for c in classes if c not in CLASSES]
    if not classes or bad or len(set(classes)) != len(classes):
        raise ValueError(f"--reference-precisions {text!r}: give distinct classes among {', '.join(CLASSES)}")
    return classes


def check_reference_precisions(text: str, dtype: str = "float32", device: str = "cpu") -> list[str]:
    """Parse and check that every quantized class can run here: a one-line QuantError/ValueError before start-up."""
    classes = parse_reference_precisions(text)
    for cls in classes:
        d, quant = class_load_args(cls, dtype)
        check_quant(quant, parse_dtype(d), device)
    return classes


def reference_publisher(dht, node_key, subnet_id: int, model: str, num_blocks: int, dtype: str,
                        precisions: str | None, *, weights=None) -> ReferencePublisher:
    """The node's reference publisher: in --dtype alone (on the node's shared `weights` copy,
    validator/weights.py, when given), or in each of `precisions` (those load their own quantized copies)."""
    if not precisions:
        return ReferencePublisher(dht, node_key, subnet_id, ReferenceModel(model, num_blocks, dtype, weights=weights))
    classes = parse_reference_precisions(precisions)
    return ClassReferencePublisher(dht, node_key, subnet_id, ClassReferenceModel(model, num_blocks, classes, dtype))


def verify_reference_reveals(subnet_id: int, epoch: int, spec: ProbeSpec, commits: dict[str, OpenedRecord],
                             reveals: dict[str, dict], problems: dict[str, str] | None = None
                             ) -> tuple[dict[str, dict[str, dict[int, torch.Tensor]]], dict[str, str]]:
    """({class: {validator: {block: float32 tensor}}}, status per validator) of references that open their commit."""
    problems = problems or {}
    by_class: dict[str, dict[str, dict[int, torch.Tensor]]] = {}
    status: dict[str, str] = {}
    one = len(encode_tensor(torch.zeros(spec.shape, dtype=torch.float32)))  # exact size of one class's tensor
    for peer, commit, reveal in _paired(commits, reveals, problems, status):
        try:
            classes = reference_classes(commit.payload)
            blocks = commit.payload["blocks"]
            outs = reveal["outputs"]
            if sorted(int(k) for k in outs) != blocks:
                raise ValueError("revealed blocks differ from the committed ones")
            if any(b not in spec.blocks for b in blocks):
                raise ValueError("block outside the probe")
            raw = {int(k): decode_b64(v, one * len(classes)) for k, v in outs.items()}
            if not verify_commitment(bytes.fromhex(commit.payload["commit"]), bytes.fromhex(reveal["salt"]),
                                     encode_block_outputs(subnet_id, epoch, peer, raw)):
                raise ValueError("reveal does not match the commit")
            mine: dict[str, dict[int, torch.Tensor]] = {cls: {} for cls in classes}
            for b, data in raw.items():
                if len(data) != one * len(classes):
                    raise ValueError(f"block {b}: {len(data)} bytes for {len(classes)} probe tensors")
                for i, cls in enumerate(classes):
                    t = decode_tensor(data[i * one:(i + 1) * one], expected_shape=spec.shape)
                    if t.dtype != torch.float32:
                        raise ValueError(f"block {b} output is {t.dtype}, probe dtype is float32")
                    mine[cls][b] = t
        except (ValueError, EncodingError, ConsensusRecordError, KeyError, TypeError) as e:
            status[peer] = f"invalid: {e}"[:200]
            continue
        for cls, tensors in mine.items():
            by_class.setdefault(cls, {})[peer] = tensors
        status[peer] = VALID
    return by_class, status
