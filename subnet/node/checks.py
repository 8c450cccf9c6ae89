"""Checks of the common user mistakes, run before anything starts (no DHT, no chain).

Each raises a `UserError` whose message is one line, so a bad `--model` path, a `--blocks`
range past the model, a CUDA device on a CPU-only torch or a malformed `--initial-peers`
address end in `mesh-node: error: ...` instead of a traceback from deep inside a start-up.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from subnet.node.errors import UserError

# A Hugging Face hub id: `name` or `namespace/name` of word characters, dots and dashes.
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
_CUDA = re.compile(r"cuda(?::(\d+))?")


def _looks_local(model: str) -> bool:
    """True when `model` can only mean a path (it cannot be a hub id)."""
    return model.startswith(("/", ".", "~")) or "\\" in model or not _HUB_ID.fullmatch(model)


def check_model(model: str, flag: str = "--model") -> None:
    """A model that names a local path must be a checkpoint directory (with config.json)."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{flag} {model}: the directory has no config.json (not a Hugging Face checkpoint)")
    elif path.is_file() and path.suffix.lower() == ".gguf":
        return  # a llama.cpp checkpoint hosters serve directly (subnet/model/gguf_weights.py)
    elif path.exists():
        raise UserError(f"{flag} {model}: is a file; give the checkpoint directory")
    elif _looks_local(model):
        raise UserError(f"{flag} {model}: no such directory (give a model directory or a hub id like org/name)")


def model_layers(model: str) -> int | None:
    """Number of transformer layers of a local checkpoint, read from its config.json (None if unknown)."""
    path = Path(model).expanduser() / "config.json"
    if not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    for c in (cfg, cfg.get("text_config") or {}):
        n = c.get("num_hidden_layers")
        if isinstance(n, int):
            return n
    return None


def check_blocks(blocks: str, end: int, model: str) -> None:
    """`--blocks a:b` (already parsed: `end` is b) must end within a local checkpoint's layers."""
    layers = model_layers(model)
    if layers is not None and end > layers:
        raise UserError(f"--blocks {blocks}: the model has {layers} layers (blocks 0:{layers}); "
                        f"the range must end at {layers} or before")


def check_device(device: str | None) -> None:
    """A CUDA device needs a torch built with CUDA and that many GPUs."""
    if not device or not device.startswith("cuda"):
        return
    m = _CUDA.fullmatch(device)
    if m is None:
        raise UserError(f"--device {device!r}: expected cpu, cuda or cuda:N")
    import torch  # deferred: torch takes seconds to import; only a CUDA device needs it here

    if not torch.cuda.is_available():
        raise UserError(f"--device {device}: this torch ({torch.__version__}) has no usable CUDA; "
                        "use --device cpu or install a CUDA build of torch")
    index = int(m.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")


def check_initial_peers(peers: Sequence[str] | None, flag: str = "--initial-peers") -> None:
    """Every peer must be a multiaddr ending in /p2p/<peer id> (hivemind dials by peer id)."""
    if not peers:
        return
    from hivemind.utils.multiaddr import Multiaddr  # deferred: hivemind imports torch (seconds)
    from hivemind.utils.multiaddr.exceptions import Error as MultiaddrError  # deferred: as above

    for peer in peers:
        try:
            protocols = [p.name for p in Multiaddr(peer).protocols()]
        except (ValueError, MultiaddrError) as e:
            reason = str(e).replace("\n", " ")
            raise UserError(f"{flag}: {peer!r} is not a multiaddr ({reason})") from None
        if "p2p" not in protocols:
            raise UserError(f"{flag}: {peer!r} has no /p2p/<peer id> (give the whole address a node prints, "
                            "e.g. /ip4/1.2.3.4/tcp/31337/p2p/12D3KooW...)")


def check_adapters(adapters: str, model: str, model_name: str | None = None) -> None:
    """Every `--adapters` entry must be a readable LoRA adapter (PEFT format) for `model`; the factors'
    shapes are checked again when the hoster loads its blocks, still before it announces."""
    from hoster.adapters import AdapterError, check_sources  # deferred: imports torch
    from subnet.model.adapters import parse_adapter_list  # deferred: imports torch

    try:
        check_sources(parse_adapter_list(adapters), model, model_name)
    except (AdapterError, ValueError) as e:
        raise UserError(str(e)) from None
