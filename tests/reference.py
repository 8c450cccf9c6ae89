"""Reference outputs from the full local transformers model (what served blocks must equal)."""

from __future__ import annotations

import torch


def reference_layers(model_path: str, hidden_in: torch.Tensor | None, k: int, n: int, ids: torch.Tensor):
    """(input of layer k, output of layer n-1) captured from the full transformers model's own forward."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    got: dict[str, torch.Tensor] = {}

    def pre(module, args, kwargs):
        got["in"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

    def post(module, args, output):
        got["out"] = (output[0] if isinstance(output, tuple) else output).detach().clone()

    h1 = model.model.layers[k].register_forward_pre_hook(pre, with_kwargs=True)
    h2 = model.model.layers[n - 1].register_forward_hook(post)
    with torch.no_grad():
        model(ids)
    h1.remove()
    h2.remove()
    return got["in"], got["out"]
