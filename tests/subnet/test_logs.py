"""Structured logs: one `key=value` line per event, written to the stderr of the moment."""

from __future__ import annotations

import io
import logging
import sys

from subnet.logs import event, setup_logging


def test_a_closed_setup_stream_does_not_break_later_logging(monkeypatch):
    # A CLI entry point run in-process (as tests do) sets logging up while stderr is a capture
    # buffer that is closed afterwards; threads it started keep logging.
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        first = io.StringIO()
        monkeypatch.setattr(sys, "stderr", first)
        setup_logging("INFO")
        first.close()
        now = io.StringIO()
        monkeypatch.setattr(sys, "stderr", now)
        monkeypatch.setattr(logging, "raiseExceptions", True)
        event(logging.getLogger("mesh_node.test"), "session_opened", peer="abc", note="two words")
        line = now.getvalue()
        assert "INFO    mesh_node.test session_opened peer=abc note=\"two words\"" in line
        assert "Logging error" not in line
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
