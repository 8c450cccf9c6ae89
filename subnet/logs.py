"""Structured logging: one line per event, `key=value` fields, levels that mean something."""

from __future__ import annotations

import logging
import sys
import time


class _KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields = getattr(record, "fields", None) or {}
        extra = "".join(f" {k}={_fmt(v)}" for k, v in fields.items())
        line = f"{ts}.{int(record.msecs):03d}Z {record.levelname:<7} {record.name} {record.getMessage()}{extra}"
        if record.exc_info and record.levelno >= logging.ERROR:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _fmt(v) -> str:
    s = str(v)
    return f'"{s}"' if (" " in s or not s) else s


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record is emitted, not the one at set-up: a CLI
    entry point called in-process (tests, embedding) must not leave threads writing to a stream
    that has since been closed or replaced."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(level: str = "INFO") -> None:
    handler = _StderrHandler()
    handler.setFormatter(_KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("hivemind", "httpx", "urllib3", "asyncio", "filelock"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    # Warnings an operator cannot act on, printed at every start of a node whose transformers
    # imports torchao: CUDA-only kernels a CPU build cannot load, no triton, and torchao's use of
    # a torch API deprecated for Enums. A WARN line must mean something to whoever reads it.
    for muted in ("torchao", "torch.utils._pytree"):
        logging.getLogger(muted).setLevel(logging.ERROR)


def event(logger: logging.Logger, message: str, level: int = logging.INFO, **fields) -> None:
    """Log one event with structured fields: `event(log, "session_opened", peer=..., tokens=...)`."""
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={"fields": fields})
