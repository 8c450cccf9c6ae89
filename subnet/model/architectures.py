"""Which transformers architectures a hoster can serve, and what differs between them.

Every architecture runs with transformers' own classes (`XxxDecoderLayer`,
`XxxRotaryEmbedding`, `XxxRMSNorm`); this module only knows where they live and the few
places the families differ for a split model:

- attention: Gemma 2's logit soft-capping has no sdpa path, so it runs `eager` (what
  `from_pretrained` picks for it too); everything else runs `sdpa`.
- rotary embeddings: Gemma 3 computes one (cos, sin) per layer type (local and global rope).
- mixture of experts (Mixtral, Qwen3-MoE): checkpoints hold one tensor per expert, the
  layer classes hold them stacked (`experts.gate_up_proj`, `experts.down_proj`);
  `fuse_experts` does what transformers' loading conversion does, per layer.
- client side (`client_embedding`, `SoftCappedHead`): Gemma scales embeddings by
  sqrt(hidden) and soft-caps the final logits; the client holds both, hosters never see them.
"""

from __future__ import annotations

import importlib
import inspect

import torch
from torch import nn

SUPPORTED_ARCHITECTURES = {
    # model_type: (modeling module, class-name prefix)
    "llama": ("transformers.models.llama.modeling_llama", "Llama"),
    "mistral": ("transformers.models.mistral.modeling_mistral", "Mistral"),
    "qwen2": ("transformers.models.qwen2.modeling_qwen2", "Qwen2"),
    "qwen3": ("transformers.models.qwen3.modeling_qwen3", "Qwen3"),
    "gemma2": ("transformers.models.gemma2.modeling_gemma2", "Gemma2"),
    "gemma3_text": ("transformers.models.gemma3.modeling_gemma3", "Gemma3"),
    "phi3": ("transformers.models.phi3.modeling_phi3", "Phi3"),
    "mixtral": ("transformers.models.mixtral.modeling_mixtral", "Mixtral"),
    "qwen3_moe": ("transformers.models.qwen3_moe.modeling_qwen3_moe", "Qwen3Moe"),
}

# model_type: (renames applied to layer-relative names, gate, up, down per-expert names)
_MOE = {
    "mixtral": ((("block_sparse_moe.", "mlp."),), "w1", "w3", "w2"),
    "qwen3_moe": ((), "gate_proj", "up_proj", "down_proj"),
}


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture has no block implementation here."""


class CheckpointError(ValueError):
    """The checkpoint is missing files or tensors the requested blocks need."""


def supported_list() -> str:
    return ", ".join(sorted(SUPPORTED_ARCHITECTURES))


def check_supported(config) -> None:
    """One-line refusal naming the architecture and what is supported; also refuses pre-quantized checkpoints."""
    if config.model_type not in SUPPORTED_ARCHITECTURES:
        archs = ", ".join(getattr(config, "architectures", None) or [])
        raise UnsupportedModelError(
            f"architecture {config.model_type!r} ({archs}) is not supported; supported: {supported_list()}")
    quant = getattr(config, "quantization_config", None)
    if quant:
        method = quant.get("quant_method", "?") if isinstance(quant, dict) else getattr(quant, "quant_method", "?")
        raise CheckpointError(
            f"checkpoint is pre-quantized ({method}: its weights come with scale tensors the layer classes do not "
            f"take); serve the full-precision (bf16/fp16/fp32) checkpoint, optionally with --quant int8|nf4")


def mismatch_message(what: str, missing: list[str], unexpected: list[str]) -> str:
    """A one-line CheckpointError text; scale tensors mean a pre-quantized (e.g. FP8) export."""
    msg = f"{what}: missing tensors {missing}, unexpected {unexpected}"
    if any("scale" in n for n in unexpected):
        msg += (" (the scale tensors mean a pre-quantized checkpoint, e.g. FP8: serve the full-precision "
                "checkpoint, optionally with --quant int8|nf4)")
    return msg


def module_of(config):
    return importlib.import_module(SUPPORTED_ARCHITECTURES[config.model_type][0])


def classes(config) -> tuple[type, type, type]:
    """(decoder layer, rotary embedding, RMSNorm) classes of the config's architecture."""
    module = module_of(config)
    prefix = SUPPORTED_ARCHITECTURES[config.model_type][1]
    return (getattr(module, f"{prefix}DecoderLayer"), getattr(module, f"{prefix}RotaryEmbedding"),
            getattr(module, f"{prefix}RMSNorm"))


def attention_implementation(config) -> str:
    """`sdpa` where the architecture supports it (what `from_pretrained` picks on CPU), else `eager`."""
    module = module_of(config)
    prefix = SUPPORTED_ARCHITECTURES[config.model_type][1]
    base = getattr(module, f"{prefix}PreTrainedModel")
    return "sdpa" if getattr(base, "_supports_sdpa", False) else "eager"


def configure(config) -> None:
    """Attention and experts implementations as `from_pretrained` picks them on CPU (same numbers)."""
    config._attn_implementation = attention_implementation(config)
    if config.model_type in _MOE:
        config._experts_implementation = "grouped_mm"


def rotary_by_type(rotary: nn.Module) -> bool:
    """Whether the rotary module computes per layer type (Gemma 3: `forward(x, position_ids, layer_type)`)."""
    return "layer_type" in inspect.signature(rotary.forward).parameters


def position_embeddings(rotary: nn.Module, hidden: torch.Tensor, position_ids: torch.Tensor,
                        kinds: set[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(cos, sin) for every layer kind in `kinds`, as the model's own forward computes them."""
    if rotary_by_type(rotary):
        return {k: rotary(hidden, position_ids, k) for k in kinds}
    shared = rotary(hidden, position_ids)
    return {k: shared for k in kinds}


def fuse_experts(config, state: dict[str, torch.Tensor], num_experts: int | None = None) -> dict[str, torch.Tensor]:
    """Per-expert checkpoint tensors of one layer -> the stacked parameters the layer class holds.

    `gate_up_proj[e] = cat(gate_e, up_e)`, `down_proj[e] = down_e` (transformers' own conversion).
    Layers without per-expert tensors (and non-MoE models) come back unchanged.
    """
    spec = _MOE.get(config.model_type)
    if spec is None:
        return state
    renames, gate, up, down = spec
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        for old, new in renames:
            name = name.replace(old, new)
        out[name] = t
    prefix = "mlp.experts."
    experts = sorted({int(n[len(prefix):].split(".")[0]) for n in out if n.startswith(prefix)
                      and n[len(prefix):].split(".")[0].isdigit()})
    if not experts:
        return out
    expected = num_experts or len(experts)
    if experts != list(range(expected)):
        raise CheckpointError(f"expert tensors for experts {experts}, expected 0..{expected - 1}")

    def take(e: int, which: str) -> torch.Tensor:
        key = f"{prefix}{e}.{which}.weight"
        if key not in out:
            raise CheckpointError(f"missing expert tensor {key}")
        return out.pop(key)

    gate_up = [torch.cat([take(e, gate), take(e, up)], dim=0) for e in experts]
    downs = [take(e, down) for e in experts]
    out[f"{prefix}gate_up_proj"] = torch.stack(gate_up)
    out[f"{prefix}down_proj"] = torch.stack(downs)
    return out


# ----------------------------------------------------------------------------- client side


def client_embedding(config, weight: torch.Tensor) -> nn.Embedding:
    """The token embedding as the model's own forward applies it (scaled for Gemma)."""
    module = module_of(config)
    prefix = SUPPORTED_ARCHITECTURES[config.model_type][1]
    scaled = getattr(module, f"{prefix}TextScaledWordEmbedding", None)
    if scaled is None:
        embed = nn.Embedding(config.vocab_size, config.hidden_size, device="meta")
    else:
        with torch.device("meta"):
            embed = scaled(config.vocab_size, config.hidden_size, getattr(config, "pad_token_id", None),
                           embed_scale=config.hidden_size ** 0.5)
        embed.embed_scale = torch.tensor(config.hidden_size ** 0.5, device=weight.device)
    embed.weight = nn.Parameter(weight, requires_grad=False)
    return embed


class SoftCappedHead(nn.Module):
    """LM head followed by the final logit soft-capping `cap * tanh(logits / cap)` (Gemma 2/3)."""

    def __init__(self, head: nn.Module, cap: float):
        super().__init__()
        self.head, self.cap = head, float(cap)

    @property
    def weight(self) -> torch.Tensor:
        return self.head.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.head(x) / self.cap) * self.cap


def client_head(config, head: nn.Module) -> nn.Module:
    cap = getattr(config, "final_logit_softcapping", None)
    return SoftCappedHead(head, cap) if cap else head
