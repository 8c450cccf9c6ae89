"""Structured logs: one `key=value` line per event, written to the stderr of the moment."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from subnet.logs import event, setup_logging


@pytest.fixture
def root_logging():
    """The root logger's handlers and level, restored after the test (setup_logging replaces them)."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield root
    root.handlers[:], level = saved
    root.setLevel(level)


def test_a_closed_setup_stream_does_not_break_later_logging(monkeypatch, root_logging):
    # A CLI entry point run in-process (as tests do) sets logging up while stderr is a capture
    # buffer that is closed afterwards; threads it started keep logging.
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


def test_third_party_warnings_nobody_can_act_on_are_muted(monkeypatch, root_logging):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    setup_logging("INFO")
    logging.getLogger("torchao").warning("Failed to load _C_mxfp8.so")
    logging.getLogger("torchao.kernel.intmm").warning("Detected no triton")
    logging.getLogger("torch.utils._pytree").warning("Enum subclass register_constant() is deprecated")
    logging.getLogger("torchao").error("a real error")
    assert "Failed to load" not in out.getvalue() and "triton" not in out.getvalue()
    assert "deprecated" not in out.getvalue() and "a real error" in out.getvalue()


def test_captured_logs_of_a_test_show_the_event_fields(caplog):
    """tests/conftest.py: pytest's captured log (shown when a test fails) carries `key=value` fields,
    so a flaky multi-process test's report names the hoster that failed and the error."""
    event(logging.getLogger("subnet.client.manager"), "hoster_failed", logging.WARNING, peer="12D3KooWabc",
          error="StepDeadline: late")
    assert caplog.messages == ["hoster_failed"]
    assert "hoster_failed peer=12D3KooWabc error=StepDeadline: late" in caplog.text
