"""The dashboard of a live `mesh-node devnet` in headless Chromium: hosters and their blocks,
a settled epoch with the validator's commits and reveals, and a chat answer streamed
through the swarm."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time

import httpx
import pytest

CHROMIUM = os.environ.get("MESH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed")]


@pytest.fixture(scope="module")
def devnet(tmp_path_factory):
    from subnet.node.procs import ManagedProcess

    d = tmp_path_factory.mktemp("dash-devnet")
    proc = ManagedProcess("devnet", [sys.executable, "-m", "subnet.node.cli", "devnet", "--hosters", "2",
                                     "--block-time", "0.3", "--api-port", "0", "--dir", str(d / "devnet")],
                          log_path=d / "devnet.log")
    try:
        urls = json.loads(proc.wait_ready(timeout=300).split(" ", 1)[1])
        base = urls["dashboard"].rstrip("/")
        deadline = time.monotonic() + 240
        while True:  # until an epoch is settled with scores AND this validator saw its hosters' commits
            # (on a loaded machine the in-process validator can miss an epoch's commit phase while another
            # validator's proposal is still accepted: such an epoch shows 0 commits, which the test checks)
            epochs = httpx.get(base + "/subnet/epochs", params={"limit": 50}, timeout=30).json()["data"]
            settled = [e for e in epochs if e["outcome"] == "accepted" and e["proposal"] and e["commits"]]
            if settled:
                break
            assert proc.alive, f"devnet exited (log {d / 'devnet.log'})"
            assert time.monotonic() < deadline, f"no accepted epoch with commits in time: {epochs[:6]}"
            time.sleep(1)
        yield base, settled[0]["epoch"]
    finally:
        if proc.alive:
            proc.proc.send_signal(signal.SIGINT)
        proc.stop(timeout=60)


def test_dashboard_on_live_devnet(devnet):
    sync_api = pytest.importorskip("playwright.sync_api")
    base, settled = devnet
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(base + "/")

            # hosters and their blocks: two hosters cover the model between them
            page.wait_for_selector("svg.coverage-grid rect.served", timeout=30000)
            assert "fully covered" in page.locator("#coverage").inner_text()
            assert page.locator("svg.coverage-grid text.hoster-label").count() == 2
            assert page.locator("#nodes-table tbody tr").count() >= 2  # registered nodes (chain)

            # the settled epoch: accepted on chain, with the validator's view of commits and reveals
            cell = page.locator(f'g.epoch-cell[data-epoch="{settled}"]')
            cell.wait_for(timeout=30000)
            assert "outcome-accepted" in cell.get_attribute("class")
            rows = [r.split("\t") for r in page.locator("#epochs-table tbody tr").all_inner_texts()]
            row = next((r for r in rows if r[0] == str(settled)), None)  # the table shows the newest 12 (72 s)
            assert row is not None and row[1] == "accepted" and row[4] not in ("", "0"), (settled, rows)
            page.wait_for_selector("#scores-plot svg circle", timeout=30000)

            # chat through the swarm streams back
            page.wait_for_function("document.querySelector('#chat-model').options.length > 0", timeout=60000)
            page.fill("#chat-max-tokens", "12")
            page.fill("#chat-temperature", "0")
            page.fill("#chat-input", "Hello swarm")
            page.click("#chat-send")
            page.wait_for_selector("#chat-log .msg.assistant.done", timeout=120000)
            assert page.locator("#chat-log .msg.assistant .content").inner_text().strip()
            assert "tokens" in page.locator("#chat-status").inner_text()
            assert not errors, errors
        finally:
            browser.close()
