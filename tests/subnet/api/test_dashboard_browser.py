"""The dashboard in headless Chromium (Debian's package, driven by Playwright): hosters,
an epoch, plots, and a chat message that streams back from the live API."""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = os.environ.get("MESH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def proposer(live_subnet):
    """Validators at work: accepted epochs keep coming and the nodes keep their reputation."""
    from api_support import Proposer

    p = Proposer(live_subnet)
    try:
        p.wait_accepted(2)  # the first accepted epoch is then settled (its outcome final)
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def dashboard_url(local_backend, live_subnet, proposer):
    from api_support import live_server

    from subnet.api import create_app

    app = create_app(local_backend, subnet_view=live_subnet.view(), max_tokens_limit=512)
    with live_server(app) as url:
        yield url


def test_dashboard_shows_hosters_epochs_and_streams_chat(browser, dashboard_url, live_subnet, proposer):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(dashboard_url + "/")

    # hosters and their blocks
    page.wait_for_selector("#nodes-table tbody tr >> nth=2", timeout=15000)
    rows = page.locator("#nodes-table tbody tr")
    assert rows.count() == 3
    text = page.locator("#nodes-table").inner_text()
    assert f"[0:{live_subnet.spans[0][1]})" in text and "validator" in text
    page.wait_for_selector("svg.coverage-grid rect.served")
    served = page.locator("svg.coverage-grid rect.served").count()
    assert served == sum(end - start for start, end in live_subnet.spans)
    assert "fully covered" in page.locator("#coverage").inner_text()

    # a settled accepted epoch on the timeline and in the table; plots drawn
    cell = page.locator(f'g.epoch-cell[data-epoch="{min(proposer.accepted)}"]')
    cell.wait_for(timeout=15000)
    assert "outcome-accepted" in cell.get_attribute("class")
    assert "accepted" in page.locator("#epochs-table").inner_text()
    page.wait_for_selector("#scores-plot svg circle")
    page.wait_for_selector("#rewards-plot svg circle")
    assert page.locator("#scores-plot svg path").count() == 3

    # chat: the answer streams in (several updates, then done)
    page.wait_for_function("document.querySelector('#chat-model').options.length > 0")
    page.fill("#chat-max-tokens", "40")
    page.fill("#chat-temperature", "0")
    page.evaluate("""() => {
        window.__updates = 0;
        new MutationObserver(() => window.__updates++).observe(
            document.getElementById('chat-log'), {subtree: true, childList: true, characterData: true});
    }""")
    page.fill("#chat-input", "Hello there")
    page.click("#chat-send")
    page.wait_for_selector("#chat-log .msg.assistant.done", timeout=30000)
    answer = page.locator("#chat-log .msg.assistant .content").inner_text()
    assert answer.strip()
    assert page.evaluate("window.__updates") > 3  # streamed piece by piece, not in one go
    assert "tokens" in page.locator("#chat-status").inner_text()
    assert page.locator("#chat-log .msg.user").inner_text().endswith("Hello there")

    # a second turn keeps the history; /clear-like button empties it
    page.fill("#chat-input", "And again")
    page.click("#chat-send")
    page.wait_for_function("document.querySelectorAll('#chat-log .msg.assistant.done').length == 2",
                           timeout=30000)
    page.click("#chat-clear")
    assert page.locator("#chat-log .msg").count() == 0

    assert not errors, errors
    assert all(u.startswith(dashboard_url) for u in requests), "the dashboard must not load anything external"
    page.close()
