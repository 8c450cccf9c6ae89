"""The one error type of the node's face: a mistake in input or environment, not a bug.

`subnet.node.cli` reports a `UserError` as one line (`mesh-node: error: ...`) and exits 1,
without a traceback. It lives in its own module so that the CLI, the config loader, the
commands and the node assembly can all raise it without importing each other.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by input or environment that the CLI reports in one line."""


class ConfigError(UserError, ValueError):
    """A config file or environment value is unreadable, unknown or has the wrong type."""


class NodeConfigError(UserError):
    """A node option (`mesh-node --hoster/--validator ...`) is missing or inconsistent."""
