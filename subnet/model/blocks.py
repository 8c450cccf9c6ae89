"""Load only the transformer blocks a node needs, with transformers' own layer classes.

A hoster builds decoder layers [start, end) of a causal LM and loads exactly their
tensors from the safetensors checkpoint (by name), so its memory grows with the
number of blocks it serves, not with the model. The client loads only the
embeddings, final norm and LM head (`load_client_parts`).

Attention, rotary embeddings, masks and KV caches are transformers' own:
`XxxDecoderLayer` (returns a tensor, takes `position_embeddings=(cos, sin)`),
`XxxRotaryEmbedding`, `masking_utils.create_causal_mask` /
`create_sliding_window_causal_mask`, and `Cache` objects indexed by the global
`layer_idx` (layers outside the span are `DummyLayer`s that hold nothing).
"""

from __future__ import annotations

import json
import os
import re
import types
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from subnet.model.architectures import (  # noqa: F401
    SUPPORTED_ARCHITECTURES,
    CheckpointError,
    UnsupportedModelError,
    check_supported,
    classes as _classes,
    client_embedding,
    client_head,
    configure,
    fuse_experts,
    mismatch_message,
    position_embeddings as _position_embeddings,
)
from subnet.model.checkpoint import INDEX_FILE, SINGLE_FILE, WeightIndex as _WeightIndex
from subnet.model.gguf_weights import GGUFIndex, gguf_config, is_gguf
from subnet.model.kernels import convert_linear, convert_linears, effective_kernel, packed_bytes, replaces_weights
from subnet.model.memory import trim
from subnet.model.names import DTYPE_NAMES
from subnet.model.quant import module_bytes, parse_quant, quantize_module

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
# attention implementations whose causal mask for one new position without padding is None
_SDPA_KINDS = ("sdpa", "mesh_rows_sdpa")


# ----------------------------------------------------------------------------- identity


def model_uid(path_or_id: str | os.PathLike, name: str | None = None) -> str:
    """DHT-safe model name: `name` if given, else the last path component / hub id with `/` -> `--`.

    Hosters and clients must compute the same uid from the same argument (see PROTOCOL.md).
    """
    if name:
        raw = name
    else:
        text = str(path_or_id).rstrip("/\\")
        if os.path.isdir(text):
            raw = Path(text).name
        else:
            raw = text.replace("/", "--")
    uid = re.sub(r"[^a-z0-9._-]+", "-", raw.lower()).strip("-.")
    if not uid:
        raise ValueError(f"cannot derive a model uid from {path_or_id!r} (give --model-name)")
    return uid[:128]


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype}")
        return dtype
    try:
        return DTYPES[str(dtype).replace("torch.", "")]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype!r}; choose one of {', '.join(DTYPES)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ----------------------------------------------------------------------------- files


def _is_local(path_or_id: str | os.PathLike) -> bool:
    return os.path.isdir(os.fspath(path_or_id))


def load_config(path_or_id: str | os.PathLike):
    """The model's transformers config (local dir, or only `config.json` from the hub)."""
    from transformers import AutoConfig

    if is_gguf(path_or_id):
        config = gguf_config(path_or_id)
        check_supported(config)
        configure(config)
        return config
    local = resolve_files(path_or_id, [])
    try:
        config = AutoConfig.from_pretrained(local)
    except (ValueError, KeyError) as e:  # a model_type this transformers does not know
        raise UnsupportedModelError(f"{str(e).splitlines()[0]}; supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
                                    ) from None
    check_supported(config)
    configure(config)  # attention/experts implementations: what from_pretrained picks on CPU
    return config


def resolve_files(path_or_id: str | os.PathLike, tensor_names: Iterable[str]) -> str:
    """A local directory holding config, weight index and the shards with `tensor_names`.

    For a hub id, downloads only `config.json`, the index and the needed shards
    (huggingface_hub; respects HF_HUB_OFFLINE). Never called with a hub id in tests.
    """
    if _is_local(path_or_id):
        return os.fspath(path_or_id)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    repo = str(path_or_id)
    config_path = hf_hub_download(repo, "config.json")
    root = os.path.dirname(config_path)
    names = list(tensor_names)
    if not names:
        return root
    try:
        index_path = hf_hub_download(repo, INDEX_FILE)
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
        shards = sorted({weight_map[n] for n in names if n in weight_map})
    except EntryNotFoundError:
        shards = [SINGLE_FILE]
    for shard in shards:
        hf_hub_download(repo, shard)
    return root


def _layer_prefix(names: Iterable[str]) -> str:
    """Prefix before `layers.{i}.` in the checkpoint (`model.` for *ForCausalLM checkpoints)."""
    for n in names:
        m = re.match(r"^(.*?)layers\.\d+\.", n)
        if m:
            return m.group(1)
    raise CheckpointError("checkpoint has no decoder layer tensors (expected names like model.layers.0.*)")


def layer_type(config, layer_idx: int) -> str:
    """Attention kind of a layer, as the model's own forward decides it."""
    types = getattr(config, "layer_types", None)
    if types:
        return types[layer_idx]
    return "sliding_attention" if getattr(config, "sliding_window", None) else "full_attention"


# ----------------------------------------------------------------------------- blocks


def unwrap_hub_kernel_forwards(root: nn.Module) -> int:
    """Give every module that transformers decorated with the `kernels` package's
    `use_kernelized_func` its undecorated `forward` (number of modules changed).

    That wrapper routes hub kernels swapped in by `kernels.kernelize`, which nothing here calls, so
    it only costs a dict copy and a context-variable set/reset per call. Worse, once any thread has
    compiled, the variable is one process-wide global: a decode step compiled in the background
    (hoster.compile_auto) while the compute thread serves eager steps traces a value the other
    thread keeps changing, and dynamo gives up (SpeculationLogDivergence). Without the wrapper the
    functions it routes (e.g. `apply_rotary_pos_emb`) run their plain code, as they do unkernelized.
    Those functions are `kernels` `Func` modules that still read the variable, so a compile must not
    overlap an eager forward of a still-wrapped transformers model in the same process (a hoster runs
    none; tests/hoster/test_compile_auto.py computes its reference before the hoster compiles).
    """
    changed = 0
    for module in root.modules():
        forward = type(module).forward
        if is_hub_kernel_wrapper(forward):
            module.forward = types.MethodType(forward.__wrapped__, module)
            changed += 1
    return changed


def is_hub_kernel_wrapper(forward) -> bool:
    """Whether `forward` is the `kernels` package's `use_kernelized_func` wrapper of a forward."""
    code = getattr(forward, "__code__", None)
    return (getattr(forward, "__wrapped__", None) is not None and code is not None
            and code.co_name == "new_forward" and "kernels" in code.co_filename)


class BlockSpan(nn.Module):
    """Decoder layers [start, end) of a model plus its rotary embedding module.

    `forward(hidden, position_ids, cache=None, attention_mask=None, start=None, end=None)`
    runs a sub-range [start, end) of the loaded span exactly as the full model's forward
    would run those layers (same masks, same rotary embedding, same cache semantics).
    """

    def __init__(self, config, layers: dict[int, nn.Module], rotary_emb: nn.Module, start: int, end: int,
                 dtype: torch.dtype, device: torch.device, quant: str = "none"):
        super().__init__()
        self.config = config
        self.quant = quant  # subnet.model.quant mode of the linear weights ("none": plain `dtype`)
        self.start, self.end = start, end
        self.dtype, self.device = dtype, device
        self.layers = nn.ModuleDict({str(i): layers[i] for i in range(start, end)})
        self.rotary_emb = rotary_emb
        self.hidden_size: int = config.hidden_size
        self.num_kv_heads: int = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        self.head_dim: int = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        unwrap_hub_kernel_forwards(self)

    @property
    def num_blocks(self) -> int:
        return self.end - self.start

    def kv_bytes_per_token(self, num_blocks: int | None = None) -> int:
        """Bytes of K and V one position of one sequence takes over `num_blocks` layers."""
        n = self.num_blocks if num_blocks is None else num_blocks
        return 2 * n * self.num_kv_heads * self.head_dim * torch.empty((), dtype=self.dtype).element_size()

    def weight_bytes(self) -> int:
        return module_bytes(self) + packed_bytes(self)  # quantized weights at their real size

    def new_cache(self, start: int | None = None, end: int | None = None):
        """An empty growing KV cache for layers [start, end), indexed by global layer index.

        Every layer keeps its full history (`DynamicLayer`), also for sliding-window layers:
        the sliding mask limits attention, and rollback to any earlier position stays possible.
        """
        from transformers.cache_utils import DummyLayer, DynamicCache, DynamicLayer

        start, end = self._check_range(start, end)
        cache = DynamicCache()
        cache.layers = [DummyLayer() for _ in range(start)] + [DynamicLayer() for _ in range(start, end)]
        cache.layer_class_to_replicate = None
        return cache

    def _check_range(self, start: int | None, end: int | None) -> tuple[int, int]:
        start = self.start if start is None else start
        end = self.end if end is None else end
        if not (self.start <= start < end <= self.end):
            raise ValueError(f"blocks [{start}, {end}) not within served [{self.start}, {self.end})")
        return start, end

    def _masks(self, hidden: torch.Tensor, attention_mask, cache, position_ids, start: int, end: int) -> dict:
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        kwargs = dict(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask,
                      cache=cache, position_ids=position_ids)
        if cache is not None:
            kwargs["layer_idx"] = start
        kinds = {layer_type(self.config, i) for i in range(start, end)}
        if (hidden.shape[1] == 1 and attention_mask is None and kinds == {"full_attention"}
                and self.config._attn_implementation in _SDPA_KINDS):
            return {"full_attention": None}  # what create_causal_mask returns here (sdpa skips it), ~0.1 ms sooner
        masks = {}
        if "full_attention" in kinds:
            masks["full_attention"] = create_causal_mask(**kwargs)
        if "sliding_attention" in kinds:
            masks["sliding_attention"] = create_sliding_window_causal_mask(**kwargs)
        unknown = kinds - set(masks)
        if unknown:
            raise UnsupportedModelError(f"layer types {sorted(unknown)} are not supported")
        return masks

    @torch.inference_mode()
    def forward(self, hidden: torch.Tensor, position_ids: torch.Tensor | None = None, cache=None,
                attention_mask: torch.Tensor | None = None, start: int | None = None,
                end: int | None = None) -> torch.Tensor:
        """Run layers [start, end) on `hidden` [batch, seq, hidden] (positions after the cache by default)."""
        return self.run_layers(hidden, position_ids, cache, attention_mask, *self._check_range(start, end))

    def run_layers(self, hidden: torch.Tensor, position_ids: torch.Tensor | None, cache,
                   attention_mask: torch.Tensor | None, start: int, end: int) -> torch.Tensor:
        """`forward` without entering inference mode: what `hoster.compiled` traces (callers enter it)."""
        if position_ids is None:
            past = cache.get_seq_length(start) if cache is not None else 0
            position_ids = torch.arange(past, past + hidden.shape[1], device=hidden.device).unsqueeze(0)
        masks = self._masks(hidden, attention_mask, cache, position_ids, start, end)
        embeddings = _position_embeddings(self.rotary_emb, hidden, position_ids, set(masks))
        for i in range(start, end):
            kind = layer_type(self.config, i)
            hidden = self.layers[str(i)](
                hidden,
                attention_mask=masks[kind],
                position_embeddings=embeddings[kind],
                position_ids=position_ids,
                cache=cache,
                use_cache=cache is not None,
            )
        return hidden


def load_blocks(path_or_id: str | os.PathLike, start: int, end: int, dtype: str | torch.dtype = "float32",
                device: str | torch.device = "cpu", *, progress: bool = True,
                linear_kernel: str | None = None, quant: str = "none") -> BlockSpan:
    """Build decoder layers [start, end) with transformers' classes and load only their tensors.

    `linear_kernel`: what runs their linear layers (`subnet.model.kernels`: `blas`, `onednn` or
    `torch`; None = MESH_LINEAR_KERNEL or `onednn`), where it can serve `dtype` on `device`.
    """
    from tqdm.auto import tqdm

    dtype = parse_dtype(dtype)
    device = torch.device(device)
    config = load_config(path_or_id)
    n_layers = config.num_hidden_layers
    if not (0 <= start < end <= n_layers):
        raise ValueError(f"blocks [{start}, {end}) out of range for a model with {n_layers} layers")
    layer_cls, rotary_cls, _ = _classes(config)

    directory = os.fspath(path_or_id) if _is_local(path_or_id) or is_gguf(path_or_id) else None
    if directory is None:  # hub: learn tensor names from the index, then fetch only needed shards
        directory = resolve_files(path_or_id, [])
        try:
            from huggingface_hub import hf_hub_download

            index = json.load(open(hf_hub_download(str(path_or_id), INDEX_FILE)))["weight_map"]
            prefix = _layer_prefix(index)
            wanted = [n for n in index if any(n.startswith(f"{prefix}layers.{i}.") for i in range(start, end))]
        except Exception:
            wanted = [SINGLE_FILE]
        directory = resolve_files(path_or_id, wanted)
    index = _gguf_index(directory, config, layer_cls, start, end) if is_gguf(directory) else _WeightIndex(directory)
    prefix = _layer_prefix(index.names())

    # oneDNN's packed linears are copies in its own layout: load the layer's tensors as copies too and
    # pack right away, so the originals and the file map go layer by layer instead of keeping the
    # checkpoint's pages resident next to the packed weights (measured: 2x weight RSS). The other
    # kernels use the loaded tensors as they are (zero copy).

    quant = parse_quant(quant)
    kernel = effective_kernel(linear_kernel, dtype, device) if quant == "none" else "torch"
    pack = replaces_weights(kernel) or quant != "none"  # copies: the float originals are freed per layer
    layers: dict[int, nn.Module] = {}
    bar = tqdm(range(start, end), desc=f"loading blocks {start}:{end}", unit="block", disable=not progress)
    for i in bar:
        layer_prefix = f"{prefix}layers.{i}."
        names = [n for n in index.names() if n.startswith(layer_prefix)]
        if not names:
            raise CheckpointError(f"checkpoint has no tensors for layer {i} ({layer_prefix}*)")
        with torch.device("meta"):
            layer = layer_cls(config, layer_idx=i)
        state = {n[len(layer_prefix):]: t for n, t in index.load(names, dtype, device, copy=pack).items()}
        state = fuse_experts(config, state, getattr(config, "num_local_experts", None)
                             or getattr(config, "num_experts", None))
        missing, unexpected = layer.load_state_dict(state, strict=False, assign=True)
        if missing or unexpected:
            raise CheckpointError(mismatch_message(f"layer {i}", missing, unexpected))
        _check_materialized(layer, f"layer {i}")
        del state
        convert_linears(layer, kernel)
        quantize_module(layer, quant)
        getattr(index, "release", lambda: None)()  # GGUF (always copied): the file pages this layer was read from
        if pack:
            trim()  # the originals were just freed: hand their pages back instead of keeping heap fragments
        layers[i] = layer.eval()
    bar.close()
    with torch.device(device):
        rotary = rotary_cls(config=config)
    rotary.eval()
    span = BlockSpan(config, layers, rotary, start, end, dtype, device, quant)
    span.requires_grad_(False)
    return span


def _gguf_index(path: str, config, layer_cls, start: int, end: int) -> GGUFIndex:
    """A GGUF file seen as a checkpoint of the span's layers, under their Hugging Face names."""
    names = []
    for i in range(start, end):
        with torch.device("meta"):
            names += [f"model.layers.{i}.{n}" for n in layer_cls(config, layer_idx=i).state_dict()]
    return GGUFIndex(path, config, names)


def _check_materialized(module: nn.Module, what: str) -> None:
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if t.is_meta:
            raise CheckpointError(f"{what}: {name} was not loaded from the checkpoint")


# ----------------------------------------------------------------------------- client parts


@dataclass
class ClientParts:
    """What a client holds locally: token embeddings, final norm, LM head."""

    config: object
    embed_tokens: nn.Embedding
    norm: nn.Module
    lm_head: nn.Module  # nn.Linear, or a subnet.model.kernels replacement


def load_client_parts(path_or_id: str | os.PathLike, dtype: str | torch.dtype = "float32",
                      device: str | torch.device = "cpu", *, linear_kernel: str | None = None) -> ClientParts:
    """Load embeddings, final norm and LM head only (tied LM head shares the embedding weight).

    `linear_kernel`: what runs the LM head (a vocab x hidden product per generated token, the
    client's whole per-token compute); see `load_blocks`. With `onednn` a tied head is packed
    as a copy, so the embedding matrix is held twice.
    """
    dtype = parse_dtype(dtype)
    device = torch.device(device)
    config = load_config(path_or_id)
    _, _, norm_cls = _classes(config)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    directory = os.fspath(path_or_id) if _is_local(path_or_id) else None
    if directory is None:
        directory = resolve_files(path_or_id, [])  # config first, to know the names
    probe = _WeightIndex(directory) if _is_local(directory) and _has_weights(directory) else None
    if probe is None:
        directory = resolve_files(path_or_id, ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"])
        probe = _WeightIndex(directory)
    prefix = _layer_prefix(probe.names())
    embed_name, norm_name = f"{prefix}embed_tokens.weight", f"{prefix}norm.weight"
    if not tied and "lm_head.weight" not in probe.weight_map:
        raise CheckpointError("checkpoint has no lm_head.weight and does not tie word embeddings")

    kernel = effective_kernel(linear_kernel, dtype, device)
    pack = replaces_weights(kernel)
    t = probe.load([embed_name, norm_name], dtype, device)
    if not tied:  # a head about to be packed loads as a copy: its file pages are never touched or kept
        t.update(probe.load(["lm_head.weight"], dtype, device, copy=pack))
    embed = client_embedding(config, t[embed_name])
    with torch.device("meta"):
        norm = norm_cls(config.hidden_size, eps=config.rms_norm_eps)
    norm.load_state_dict({"weight": t[norm_name]}, assign=True)
    norm.requires_grad_(False)
    head = nn.Linear(config.hidden_size, config.vocab_size, bias=False, device="meta")
    head.weight = embed.weight if tied else nn.Parameter(t.pop("lm_head.weight"), requires_grad=False)
    head = client_head(config, convert_linear(head, kernel))
    if pack:
        trim()  # the unpacked copy was just freed
    return ClientParts(config, embed.eval(), norm.eval(), head.eval())


def _has_weights(directory: str) -> bool:
    return os.path.exists(os.path.join(directory, INDEX_FILE)) or os.path.exists(os.path.join(directory, SINGLE_FILE))
