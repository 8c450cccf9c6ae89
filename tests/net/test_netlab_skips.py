"""The namespace tests skip with a clear reason where they cannot run (no root, no iproute2, no iptables)."""

from __future__ import annotations

import netlab


def test_no_root_is_a_reason(monkeypatch):
    monkeypatch.setattr(netlab.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(netlab.shutil, "which", lambda name: f"/usr/sbin/{name}")
    assert "root" in netlab.netns_unavailable()


def test_missing_tools_are_reasons(monkeypatch):
    monkeypatch.setattr(netlab.shutil, "which", lambda name: None)
    assert "iproute2" in netlab.netns_unavailable()
    assert "iptables" in netlab.iptables_unavailable()
