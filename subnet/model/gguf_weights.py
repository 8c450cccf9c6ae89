"""Serve blocks straight from a `.gguf` file (llama.cpp's format), reading only the span's tensors.

`GGUFIndex` has the interface of `checkpoint.WeightIndex` (`names()`, `load()`), with names in
the Hugging Face layout (`model.layers.3.self_attn.q_proj.weight`), so `load_blocks` builds the
same transformers layers from either format. The mapping between the two namings is gguf-py's
own (`get_tensor_name_map`) as transformers' GGUF loader uses it, and the q/k row permutation
llama.cpp's converter applies to Llama-family attention is undone with transformers'
`TensorProcessor`s. The file is memory-mapped by `gguf.GGUFReader`: only the tensors asked for
are dequantized (`gguf.quants.dequantize`: F32/F16/BF16 and llama.cpp's block formats) and
copied. The config comes from the file's metadata (`AutoConfig.from_pretrained(..., gguf_file=)`).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable

import numpy as np
import torch

from subnet.model.architectures import CheckpointError

# transformers model_type -> gguf-py architecture name, where they differ
_GGUF_ARCH = {"qwen3_moe": "qwen3moe", "qwen2_moe": "qwen2moe", "gemma3_text": "gemma3"}


def is_gguf(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(".gguf") and os.path.isfile(path)


def gguf_config(path: str | os.PathLike):
    """The transformers config described by the GGUF file's metadata."""
    from transformers import AutoConfig

    path = os.fspath(path)
    try:
        config = AutoConfig.from_pretrained(os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path))
        head_dim = _field(path, f"{_arch(config.model_type)}.attention.key_length")
    except CheckpointError:
        raise
    except Exception as e:  # a damaged file or an architecture transformers' GGUF reader does not know
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(f"{path}: cannot read the GGUF metadata ({first})") from None
    if head_dim:  # transformers' GGUF config mapping leaves head_dim at its default for some families
        config.head_dim = int(head_dim)
    return config


def _field(path: str, key: str):
    """One scalar metadata value of a GGUF file (None when absent)."""
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get(key)
    return None if field is None else field.contents()


def _arch(model_type: str) -> str:
    return _GGUF_ARCH.get(model_type, model_type)


def _name_map(config):
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    arch = next((k for k, v in MODEL_ARCH_NAMES.items() if v == _arch(config.model_type)), None)
    if arch is None:
        raise CheckpointError(f"gguf has no tensor names for architecture {config.model_type!r}")
    return get_tensor_name_map(arch, config.num_hidden_layers)


class GGUFIndex:
    """HF tensor name -> tensor of a GGUF file (layer tensors only: what hosters load)."""

    def __init__(self, path: str | os.PathLike, config, hf_names: Iterable[str]):
        from gguf import GGUFReader
        from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

        self.directory = os.fspath(path)
        try:
            reader = GGUFReader(self.directory)
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise CheckpointError(f"{self.directory}: corrupt or truncated GGUF file ({first})") from None
        self._tensors = {t.name: t for t in reader.tensors}
        self._map = getattr(reader.data, "_mmap", None)  # the file mapping (see `release`)
        names = _name_map(config)
        self.weight_map: dict[str, str] = {}  # HF name -> GGUF name (the WeightIndex attribute)
        for hf in hf_names:
            base, _, suffix = hf.rpartition(".")
            gguf_base = names.get_name(base)
            if gguf_base is not None and f"{gguf_base}.{suffix}" in self._tensors:
                self.weight_map[hf] = f"{gguf_base}.{suffix}"
        heads = {"num_attention_heads": config.num_attention_heads,
                 "num_key_value_heads": getattr(config, "num_key_value_heads", None) or config.num_attention_heads}
        self._processor = TENSOR_PROCESSORS.get(_arch(config.model_type), TensorProcessor)(config=heads)

    def names(self) -> list[str]:
        return list(self.weight_map)

    def release(self) -> None:
        """Drop the file pages read so far from this process (they stay in the page cache).

        `load` copies every tensor it returns, so after a layer is built nothing points into the
        mapping, yet the pages it touched would count in the hoster's RSS until the whole load
        ends (a full-precision file's span: as much as the float32 weights). Read-only mapping:
        pages touched again are simply re-read from the file.
        """
        if self._map is not None:
            try:
                self._map.madvise(mmap.MADV_DONTNEED)
            except (AttributeError, OSError, ValueError):  # no madvise on this platform: only memory is lost
                pass

    def load(self, names: Iterable[str], dtype: torch.dtype, device: torch.device,
             copy: bool = False) -> dict[str, torch.Tensor]:
        """Dequantize exactly `names` to `dtype` on `device` (always copies: GGUF layouts are not torch's)."""
        from gguf import dequantize

        out: dict[str, torch.Tensor] = {}
        for hf in names:
            if hf not in self.weight_map:
                raise CheckpointError(f"tensor {hf!r} not in GGUF file {self.directory}")
            gname = self.weight_map[hf]
            t = self._tensors[gname]
            try:
                values = dequantize(t.data, t.tensor_type)
            except Exception as e:
                raise CheckpointError(f"{self.directory}: tensor {gname} ({t.tensor_type.name}) cannot be read: "
                                      f"{str(e).splitlines()[0][:150] if str(e) else type(e).__name__}") from None
            shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dimensions innermost first
            values = np.ascontiguousarray(values.reshape(shape))
            values = self._processor.process(values, gname).weights
            out[hf] = torch.from_numpy(np.array(values, dtype=np.float32)).to(device=device, dtype=dtype)
        return out
