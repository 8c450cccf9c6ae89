"""Build small random-weight causal LMs with a locally built tokenizer.

Used by tests, benchmarks and `mesh-node devnet` when no model is given: no network,
real transformers model classes, safetensors checkpoints, a byte-level BPE tokenizer
trained on a built-in corpus, and a chat template.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Decentralized inference splits a transformer into blocks served by many hosters.",
    "Validators post probes, hosters commit and reveal, and the chain pays rewards.",
    "Hello world! How are you today? I am fine, thank you.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000 and symbols: + - * / = ( ) [ ] { } < >",
    "Unicode: café, naïve, 日本語, emoji 🙂, Ελληνικά, русский.",
    "def main():\n    print('hello')\n    return 0\n",
]

SPECIAL_TOKENS = ["<|bos|>", "<|eos|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]


# tiny-model name -> transformers model_type
TINY_ARCHITECTURES = {
    "llama": "llama", "qwen3": "qwen3", "qwen2": "qwen2", "mistral": "mistral",
    "llama3": "llama", "gemma2": "gemma2", "gemma3": "gemma3_text", "phi3": "phi3",
    "mixtral": "mixtral", "qwen3_moe": "qwen3_moe",
}
# what makes each tiny model exercise its family's features at a few dozen positions:
# short sliding windows, soft-capping, Llama 3 rope scaling, 4 experts with top-2 routing
_ARCH_EXTRAS: dict[str, dict] = {
    "llama3": dict(rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}),
    "gemma2": dict(sliding_window=8, query_pre_attn_scalar=16, attn_logit_softcapping=50.0,
                   final_logit_softcapping=30.0, hidden_activation="gelu_pytorch_tanh"),
    "gemma3": dict(sliding_window=8, query_pre_attn_scalar=16, final_logit_softcapping=30.0,
                   sliding_window_pattern=3),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, decoder_sparse_step=1,
                      mlp_only_layers=[]),
}


def build_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer (any UTF-8 text encodes) wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(arch: str = "llama", *, vocab_size: int, num_layers: int = 8, hidden_size: int = 64,
                intermediate_size: int = 128, num_heads: int = 4, num_kv_heads: int = 2, **overrides):
    """A small config of a supported architecture, with GQA by default."""
    from transformers import AutoConfig

    model_type = TINY_ARCHITECTURES[arch]
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    if arch in ("qwen3", "qwen3_moe", "gemma2", "gemma3"):
        kwargs["head_dim"] = hidden_size // num_heads
    kwargs.update(_ARCH_EXTRAS.get(arch, {}))
    kwargs.update(overrides)
    return AutoConfig.for_model(model_type, **kwargs)


def make_tiny_model(path: str | os.PathLike, arch: str = "llama", *, seed: int = 0, num_layers: int = 8,
                    hidden_size: int = 64, intermediate_size: int = 128, num_heads: int = 4,
                    num_kv_heads: int = 2, vocab_size: int | None = None, tokenizer_vocab: int = 512,
                    **overrides) -> Path:
    """Write a random-weight checkpoint (safetensors) and tokenizer to `path`; return it."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(tokenizer_vocab)
    vocab = vocab_size or len(tokenizer)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    config = tiny_config(arch, vocab_size=vocab, num_layers=num_layers, hidden_size=hidden_size,
                         intermediate_size=intermediate_size, num_heads=num_heads,
                         num_kv_heads=num_kv_heads, **{**ids, **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # larger-than-default init so random models make varied tokens
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False,
    )
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


_GGUF_ARCHS = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}


def write_gguf(src: str | os.PathLike, out: str | os.PathLike, ftype: str = "f32") -> Path:
    """Write a safetensors checkpoint's weights as a GGUF file (gguf-py's writer, llama.cpp's naming).

    `ftype`: f32 or f16 (matrices; norms stay f32 as llama.cpp writes them). Llama-family q/k rows are
    permuted as llama.cpp's converter does, so readers must undo it. For tests and benchmarks.
    """
    import gguf
    import numpy as np
    from safetensors.torch import load_file
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(src)
    arch = _GGUF_ARCHS[cfg.model_type]
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    w = gguf.GGUFWriter(os.fspath(out), arch)
    w.add_name(Path(src).name)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if ftype == "f16" else gguf.LlamaFileType.ALL_F32)
    names = gguf.get_tensor_name_map(next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch),
                                     cfg.num_hidden_layers)
    for name, t in sorted(load_file(os.path.join(src, "model.safetensors")).items()):
        base, _, suffix = name.rpartition(".")
        arr = t.float().numpy()
        if arch == "llama" and (base.endswith("q_proj") or base.endswith("k_proj")):
            n = heads if base.endswith("q_proj") else kv
            arr = arr.reshape(n, 2, arr.shape[0] // n // 2, *arr.shape[1:]).swapaxes(1, 2).reshape(arr.shape)
        if ftype == "f16" and arr.ndim == 2:
            arr = arr.astype(np.float16)
        w.add_tensor(f"{names.get_name(base)}.{suffix}", np.ascontiguousarray(arr))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(out)
