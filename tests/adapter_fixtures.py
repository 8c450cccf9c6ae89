"""Tiny random PEFT LoRA adapters built locally (peft's own `get_peft_model(...).save_pretrained`)."""

from __future__ import annotations

import os

import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(model_path: str, out_dir: str, *, seed: int = 0, r: int = 4, alpha: float = 8.0,
                 targets: list[str] | None = None, rslora: bool = False) -> str:
    """A LoRA adapter of `model_path` with random, non-zero A and B (so it changes the outputs)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets or TARGETS, init_lora_weights=False,
                     use_rslora=rslora)
    model = get_peft_model(base, cfg)
    with torch.no_grad():  # larger B than peft's init: a visible change of greedy tokens
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.save_pretrained(out_dir)
    return out_dir


def peft_reference(model_path: str, adapter_dir: str | None):
    """The local transformers (+ peft) model the distributed one must match."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    if adapter_dir is None:
        return base
    from peft import PeftModel

    return PeftModel.from_pretrained(base, adapter_dir).eval()


def greedy(model, ids: torch.Tensor, n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                             do_sample=False, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def adapter_dir(root: str, name: str) -> str:
    return os.path.join(root, name)
