"""The software's version, one source for `mesh-node --version` and the hosters' announcements."""

from __future__ import annotations

import importlib.metadata
import tomllib
from functools import cache
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


@cache
def version() -> str:
    """The installed distribution's version, else the source tree's pyproject (an uninstalled checkout)."""
    try:
        return importlib.metadata.version("mesh-node")
    except importlib.metadata.PackageNotFoundError:
        try:
            return str(tomllib.loads(PYPROJECT.read_text())["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"
