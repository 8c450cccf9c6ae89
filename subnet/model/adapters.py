"""LoRA adapters (PEFT format) on a hoster's blocks, applied per batch row on shared base weights.

An adapter is a PEFT directory (`adapter_config.json` + `adapter_model.safetensors`), given as
a local path or a hub id (resolved through huggingface_hub, which reads its local cache first
and honours HF_HUB_OFFLINE). Only the tensors of the served layers are read (safetensors reads
by name). Nothing is merged into the base weights: each targeted linear layer of the span is
wrapped in a `LoraLinear` that adds `scale * (x @ A^T) @ B^T` to the base output for the rows
of the current batch that chose that adapter (`AdapterRows`, set by the hoster around a step),
so sessions with different adapters, or none, run as one batch on the same base weights.

Peers name an adapter by `model_uid(source)` (a directory's name, or a hub id with `/` -> `--`),
the same rule as model names; `load_adapter` raises `AdapterError` (one line) for an adapter of
another base model, shapes that do not fit the blocks, a corrupt file or an unsupported option.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from subnet.model.architectures import CheckpointError
from subnet.model.blocks import model_uid

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MAX_ADAPTER_CONFIG_BYTES = 1 << 20
MAX_ADAPTERS = 32  # per hoster: names travel in the (size-bounded) announcement
# PEFT key of one LoRA factor of a decoder layer's module (the adapter name segment is optional)
_KEY = re.compile(r"^(?:base_model\.model\.)?(?:model\.)?(?:language_model\.)?layers\.(\d+)\.(.+?)"
                  r"\.lora_([AB])(?:\.[A-Za-z0-9_-]+)?\.weight$")
_UNSUPPORTED = (("use_dora", "DoRA"), ("modules_to_save", "modules_to_save"),
                ("layer_replication", "layer_replication"), ("alpha_pattern", "alpha_pattern"),
                ("use_qalora", "QALoRA"), ("lora_bias", "lora_bias"))


class AdapterError(CheckpointError):
    """An adapter the hoster cannot serve: a one-line message naming it and why."""


def adapter_name(source: str | os.PathLike) -> str:
    """The name peers use for an adapter (`model:adapter` in requests, announcements); at most 120
    characters, so `<model uid>:<adapter>` fits a receipt's model field (256 bytes)."""
    return model_uid(source)[:120].rstrip("-.")


def _base_name(path_or_id: str) -> str:
    return Path(str(path_or_id).rstrip("/\\")).name.lower()


@dataclass
class LoraAdapter:
    """One adapter's factors for the served layers: (layer, module path) -> (A [r, in], B [out, r], scale)."""

    name: str
    source: str
    base_model: str
    factors: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=dict)

    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b, _ in self.factors.values())


def resolve_adapter(source: str) -> str:
    """A local directory holding the adapter (a hub id: its two files via huggingface_hub's cache)."""
    if os.path.isdir(source):
        return source
    if os.path.exists(source):
        raise AdapterError(f"adapter {source!r} is a file; give the PEFT adapter directory")
    from huggingface_hub import hf_hub_download  # deferred: only for hub ids

    try:
        path = hf_hub_download(source, ADAPTER_CONFIG)
        hf_hub_download(source, ADAPTER_WEIGHTS)
    except Exception as e:  # not cached while offline, unknown repo, bad id
        raise AdapterError(f"adapter {source!r} is neither a directory nor a cached/downloadable hub id "
                           f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    return os.path.dirname(path)


def read_adapter_config(directory: str, source: str) -> dict:
    """The adapter's `adapter_config.json`, checked for what this module can apply."""
    path = os.path.join(directory, ADAPTER_CONFIG)
    if not os.path.isfile(path):
        raise AdapterError(f"adapter {source!r} has no {ADAPTER_CONFIG} (not a PEFT adapter directory)")
    if os.path.getsize(path) > MAX_ADAPTER_CONFIG_BYTES:
        raise AdapterError(f"adapter {source!r}: {ADAPTER_CONFIG} is larger than {MAX_ADAPTER_CONFIG_BYTES} bytes")
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise AdapterError(f"adapter {source!r}: {ADAPTER_CONFIG} is not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise AdapterError(f"adapter {source!r}: {ADAPTER_CONFIG} is not an object")
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterError(f"adapter {source!r} is a {cfg.get('peft_type')} adapter; only LoRA is supported")
    for key, what in _UNSUPPORTED:
        if cfg.get(key):
            raise AdapterError(f"adapter {source!r} uses {what}, which hosters do not support")
    if cfg.get("bias", "none") != "none" or cfg.get("fan_in_fan_out"):
        raise AdapterError(f"adapter {source!r} trains biases or uses fan_in_fan_out, which hosters do not support")
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1 or not isinstance(alpha, (int, float)):
        raise AdapterError(f"adapter {source!r}: {ADAPTER_CONFIG} needs a positive integer r and a lora_alpha")
    return cfg


def check_base_model(cfg: dict, source: str, model_path: str, model_name: str | None = None) -> None:
    """The adapter's `base_model_name_or_path` must name the served model (same last path component,
    or the --model-name); shapes are checked again when the tensors load."""
    base = cfg.get("base_model_name_or_path")
    if not base:
        return
    ours = {_base_name(model_path)} | ({model_name.lower()} if model_name else set())
    if _base_name(base) not in ours:
        raise AdapterError(f"adapter {source!r} is for base model {base!r}, not {model_path!r}")


def adapter_keys(directory: str, source: str) -> list[str]:
    """The tensor names of the adapter's weights file (reads the header only; AdapterError if corrupt)."""
    from safetensors import SafetensorError, safe_open  # deferred: only hosters with adapters

    weights = os.path.join(directory, ADAPTER_WEIGHTS)
    if not os.path.isfile(weights):
        raise AdapterError(f"adapter {source!r} has no {ADAPTER_WEIGHTS}")
    try:
        with safe_open(weights, "pt") as f:
            keys = list(f.keys())
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise AdapterError(f"adapter {source!r}: {ADAPTER_WEIGHTS} is corrupt or truncated "
                           f"({str(e).splitlines()[0][:200]})") from None
    if not keys:
        raise AdapterError(f"adapter {source!r}: {ADAPTER_WEIGHTS} holds no tensors")
    return keys


def load_adapter(source: str, layers: dict[int, nn.Module], dtype: torch.dtype, device: torch.device, *,
                 model_path: str, model_name: str | None = None) -> LoraAdapter:
    """Read `source`'s LoRA factors for the decoder layers in `layers` (index -> layer), checked."""
    from safetensors import SafetensorError, safe_open  # deferred: only hosters with adapters

    directory = resolve_adapter(source)
    cfg = read_adapter_config(directory, source)
    check_base_model(cfg, source, model_path, model_name)
    adapter_keys(directory, source)
    weights = os.path.join(directory, ADAPTER_WEIGHTS)
    adapter = LoraAdapter(adapter_name(source), source, str(cfg.get("base_model_name_or_path") or ""))
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    try:
        with safe_open(weights, "pt") as f:
            keys = list(f.keys())
            for key in keys:
                m = _KEY.match(key)
                if m is None:
                    raise AdapterError(f"adapter {source!r} has a tensor outside the decoder blocks' LoRA factors: "
                                       f"{key[:120]!r}")
                layer = int(m.group(1))
                if layer in layers:  # only the served span's tensors are read
                    pairs.setdefault((layer, m.group(2)), {})[m.group(3)] = f.get_tensor(key)
    except SafetensorError as e:
        raise AdapterError(f"adapter {source!r}: {ADAPTER_WEIGHTS} is corrupt or truncated "
                           f"({str(e).splitlines()[0][:200]})") from None
    except (OSError, RuntimeError, ValueError) as e:
        if isinstance(e, AdapterError):
            raise
        raise AdapterError(f"adapter {source!r}: {ADAPTER_WEIGHTS} is unreadable ({str(e)[:200]})") from None
    alpha, rslora = float(cfg["lora_alpha"]), bool(cfg.get("use_rslora"))
    for (layer, path), ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"adapter {source!r}: layer {layer} {path} lacks lora_{'B' if 'A' in ab else 'A'}")
        a, b = ab["A"], ab["B"]
        target = _submodule(layers[layer], path)
        shape = _linear_shape(target)
        r = a.shape[0] if a.dim() == 2 else -1
        if shape is None or a.dim() != 2 or b.dim() != 2 or b.shape[1] != r or (b.shape[0], a.shape[1]) != shape:
            want = f"[r, {shape[1]}] and [{shape[0]}, r]" if shape else "a linear layer"
            raise AdapterError(f"adapter {source!r} does not fit this model: layer {layer} {path} has factors "
                               f"{list(a.shape)} and {list(b.shape)}, the block needs {want} (another base model?)")
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise AdapterError(f"adapter {source!r}: layer {layer} {path} has non-finite values")
        scale = alpha / math.sqrt(r) if rslora else alpha / r
        adapter.factors[(layer, path)] = (a.to(device, dtype).contiguous(), b.to(device, dtype).contiguous(), scale)
    return adapter


def _submodule(layer: nn.Module, path: str) -> nn.Module | None:
    try:
        module = layer.get_submodule(path)
    except AttributeError:
        return None
    return module.base if isinstance(module, LoraLinear) else module


def _linear_shape(module: nn.Module | None) -> tuple[int, int] | None:
    """(out, in) of a linear layer (nn.Linear, a kernels replacement or a quantized one)."""
    if module is None:
        return None
    out_f, in_f = getattr(module, "out_features", None), getattr(module, "in_features", None)
    if isinstance(out_f, int) and isinstance(in_f, int):
        return out_f, in_f
    return None


class AdapterRows:
    """Which rows of the batch now running use which adapter (set only around a step, by the compute thread)."""

    def __init__(self):
        self.groups: list[tuple[str, slice | torch.Tensor]] = []  # (adapter name, rows); empty: no adapter

    @contextlib.contextmanager
    def use(self, choices: Sequence[tuple[str | None, int]], device: torch.device) -> Iterator[None]:
        """Within the block: rows follow `choices` = [(adapter or None, number of rows), ...] in batch order."""
        rows: dict[str, list[int]] = {}
        r = 0
        for name, n in choices:
            if name:
                rows.setdefault(name, []).extend(range(r, r + n))
            r += n
        groups: list[tuple[str, slice | torch.Tensor]] = []
        for name, idx in rows.items():
            contiguous = idx == list(range(idx[0], idx[0] + len(idx)))
            groups.append((name, slice(idx[0], idx[-1] + 1) if contiguous
                           else torch.tensor(idx, dtype=torch.long, device=device)))
        self.groups = groups
        try:
            yield
        finally:
            self.groups = []


class LoraLinear(nn.Module):
    """A base linear layer plus per-row LoRA deltas of the adapters its rows chose (see `AdapterRows`)."""

    def __init__(self, base: nn.Module, rows: AdapterRows):
        super().__init__()
        self.base = base
        self.rows = rows
        self.in_features, self.out_features = base.in_features, base.out_features
        self.factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (A [r, in], scale * B^T [r, out])

    def add(self, name: str, a: torch.Tensor, b: torch.Tensor, scale: float) -> None:
        self.factors[name] = (a, (b * scale).t().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if not self.rows.groups:
            return y
        y = y.contiguous()
        flat_y, flat_x = y.view(-1, y.shape[-1]), x.reshape(-1, x.shape[-1])
        per_row = flat_y.shape[0] // y.shape[0]  # positions per batch row
        for name, rows in self.rows.groups:
            f = self.factors.get(name)
            if f is None:
                continue
            a, bt = f
            if isinstance(rows, slice):  # the usual case: the backend orders a batch by adapter
                s = slice(rows.start * per_row, rows.stop * per_row)
                flat_y[s].addmm_(flat_x[s] @ a.t(), bt)
            else:
                y.index_add_(0, rows, (x.index_select(0, rows) @ a.t()) @ bt)
        return y


def attach_adapters(layers: dict[int, nn.Module], adapters: Sequence[LoraAdapter]) -> AdapterRows:
    """Wrap every module some adapter targets in `LoraLinear` (once) and register the factors."""
    rows = AdapterRows()
    for adapter in adapters:
        for (layer, path), f in adapter.factors.items():
            module = layers[layer].get_submodule(path)
            if not isinstance(module, LoraLinear):
                parent_path, _, child = path.rpartition(".")
                parent = layers[layer].get_submodule(parent_path) if parent_path else layers[layer]
                module = LoraLinear(module, rows)
                setattr(parent, child, module)
            module.add(adapter.name, *f)
    return rows


def session_model(model_uid: str, adapter: str | None) -> str:
    """What a session computes, as its step receipts name it: `<uid>:<adapter>` with an adapter.
    Validators recompute the base model only and refuse evidence about anything else."""
    return f"{model_uid}:{adapter}" if adapter else model_uid


def parse_adapter_list(text: str | Sequence[str] | None) -> list[str]:
    """`--adapters a,b` (or a TOML list) -> sources; duplicates and names that collide are refused."""
    if not text:
        return []
    items = [s.strip() for s in (text.split(",") if isinstance(text, str) else text)]
    items = [s for s in items if s]
    if len(items) > MAX_ADAPTERS:
        raise ValueError(f"--adapters: at most {MAX_ADAPTERS} adapters per hoster (got {len(items)})")
    names = [adapter_name(s) for s in items]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise ValueError(f"--adapters: two adapters are named {dup!r}")
    return items
