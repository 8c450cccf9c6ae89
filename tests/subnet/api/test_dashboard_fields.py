"""The dashboard's per-node fields, rewards and reputation reasons at 1280x800, in headless
Chromium against a live subnet view (a real devnet chain process and DHT announcements).

A proposer thread plays the subnet's validators: each epoch the elected node proposes scores
and the others attest, so rewards are paid; in the first epoch it handles it leaves one node
out, so the chain cuts that node's reputation with the reason "missing_from_scores". The page
is screenshotted to the test's tmp dir and to test-artifacts/dashboard.png (git-ignored)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from api_support import Proposer

CHROMIUM = os.environ.get("MESH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed")


@pytest.fixture(scope="module")
def proposing(live_subnet):
    p = Proposer(live_subnet, omit_first=True)
    view = live_subnet.view()
    deadline = time.monotonic() + 240  # 2 s epochs; a loaded machine makes proposals miss some
    while True:  # until the chain recorded the omission and paid a few epochs
        changes = view.reputation_changes(limit=50)
        paid = {r.epoch for r in view.rewards(limit=50)}
        missing = [c for c in changes if c.reason == "missing_from_scores" and c.node_id == p.victim]
        if missing and len(paid) >= 3 and p.omitted_epoch is not None:
            # the cut as the chain recorded it: the victim may have lost reputation before the proposer
            # started (epochs nobody proposed in), so it need not be 1.0 -> 0.75
            p.cut = (missing[0].before, missing[0].after)
            break
        assert time.monotonic() < deadline, "the chain recorded no reputation change in time"
        time.sleep(0.2)
    yield p
    p.close()


@pytest.fixture(scope="module")
def dashboard_url(local_backend, live_subnet, proposing):
    from api_support import live_server

    from subnet.api import create_app

    app = create_app(local_backend, subnet_view=live_subnet.view(), max_tokens_limit=64)
    with live_server(app) as url:
        yield url


def test_reputation_reason_in_view_and_api(live_subnet, proposing, dashboard_url):
    import httpx

    data = httpx.get(dashboard_url + "/subnet/reputation", params={"limit": 50}, timeout=30).json()["data"]
    missing = [c for c in data if c["reason"] == "missing_from_scores"]
    assert missing and missing[-1]["node_id"] == proposing.victim
    assert missing[-1]["epoch"] == proposing.omitted_epoch
    assert missing[-1]["after"] == pytest.approx(missing[-1]["before"] - 0.25)
    proposing.cut = (missing[-1]["before"], missing[-1]["after"])
    assert "left out" in missing[-1]["detail"]
    nodes = {n["node_id"]: n for n in httpx.get(dashboard_url + "/subnet/nodes", timeout=30).json()["data"]}
    assert nodes[proposing.victim]["reputation_change"]["reason"] in ("missing_from_scores", "scored")
    hosters = {k.peer_id for k in live_subnet.node_keys[:2]}
    for n in nodes.values():
        if n["peer_id"] in hosters:  # Validator class on chain and announcing blocks in the DHT
            assert (n["role"], n["state"], n["throughput"]) == ("both", "online", 100.0)
            assert (n["cache_tokens_free"], n["cache_tokens_total"]) == (4096, 8192)
            assert n["last_seen"] and abs(n["last_seen"] - time.time()) < 60
        else:
            assert (n["role"], n["state"], n["throughput"], n["last_seen"]) == ("validator", "offline", None, None)


# Per table: every column reachable (the table fits its wrapper, or the wrapper scrolls), the
# card itself not overflowing, the page not wider than the window.
LAYOUT_JS = """() => {
  const out = {page: [document.documentElement.scrollWidth, window.innerWidth], tables: {}};
  for (const t of document.querySelectorAll('table')) {
    const wrap = t.parentElement, card = t.closest('section');
    wrap.scrollLeft = wrap.scrollWidth;
    const last = t.querySelector('thead th:last-child').getBoundingClientRect();
    const box = wrap.getBoundingClientRect();
    out.tables[t.id] = {table: t.scrollWidth, wrap: wrap.clientWidth, overflow: getComputedStyle(wrap).overflowX,
                        card: [card.scrollWidth, card.clientWidth], lastRight: last.right, wrapRight: box.right,
                        visible: last.width > 0 && last.height > 0};
    wrap.scrollLeft = 0;
  }
  return out;
}"""


def test_dashboard_fields_rewards_and_reasons_at_1280(live_subnet, proposing, dashboard_url, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(dashboard_url + "/")
            page.wait_for_selector("#nodes-table tbody tr td.state", timeout=20000)
            page.wait_for_selector("#rewards-table tbody tr td.total", timeout=20000)
            page.wait_for_selector("#reputation-table tbody tr td.why", timeout=20000)

            heads = page.locator("#nodes-table thead th").all_inner_texts()
            for col in ("role", "state", "reputation", "why (chain's reason)", "tok/s", "cache free", "last seen"):
                assert col in heads, heads
            col = {h: i for i, h in enumerate(heads)}
            rows = {}
            for tr in page.locator("#nodes-table tbody tr").all():
                cells = tr.locator("td").all_inner_texts()
                rows[int(cells[0].lstrip("#"))] = cells
            assert sorted(rows) == live_subnet.node_ids
            by_peer = {n.peer_id: n.node_id for n in live_subnet.view().nodes()}
            for i, key in enumerate(live_subnet.node_keys):
                cells = rows[by_peer[key.peer_id]]
                if i < 2:  # the two announcing hosters
                    assert (cells[col["role"]], cells[col["state"]]) == ("both", "online"), cells
                    assert cells[col["tok/s"]] == "100.0" and cells[col["cache free"]] == "4096 / 8192"
                    assert cells[col["last seen"]] in ("just now",) or cells[col["last seen"]].endswith("s ago")
                else:
                    assert (cells[col["role"]], cells[col["state"]]) == ("validator", "offline"), cells
                    assert cells[col["tok/s"]] == "—" and cells[col["last seen"]] == "never"
            why = rows[proposing.victim][col["why (chain's reason)"]]
            assert why.startswith("epoch ") and ("left out" in why or "accepted epoch's scores" in why), why

            # the chain's reason for the cut, in the reputation table
            rep_rows = page.locator("#reputation-table tbody tr").all_inner_texts()
            cut = " → ".join(f"{x:.2f}" for x in proposing.cut)
            assert any(r.startswith(f"{proposing.omitted_epoch}\t#{proposing.victim}\t{cut}")
                       and "missing_from_scores: left out" in r for r in rep_rows), rep_rows

            # rewards per node: every node was paid emission; one row per node
            assert page.locator("#rewards-table thead th").all_inner_texts()[:6] == [
                "node", "role", "emission", "validator", "slashed", "total"]
            rewards = [r.split("\t") for r in page.locator("#rewards-table tbody tr").all_inner_texts()]
            assert sorted(int(r[0].lstrip("#")) for r in rewards) == live_subnet.node_ids
            assert all(float(r[5].replace(",", "")) > 0 for r in rewards), rewards

            # readable at 1280 px: nothing cut
            layout = page.evaluate(LAYOUT_JS)
            assert layout["page"][0] <= layout["page"][1], layout
            for name in ("nodes-table", "epochs-table", "rewards-table", "reputation-table"):
                t = layout["tables"][name]
                assert t["visible"], (name, t)
                assert t["table"] <= t["wrap"] + 1 or t["overflow"] in ("auto", "scroll"), (name, t)
                assert t["card"][0] <= t["card"][1] + 1, (name, t)  # the card holds the scroller
                assert t["lastRight"] <= t["wrapRight"] + 1, (name, t)  # the last column can be reached
            for el in ("#rewards-table", "#reputation-table", "#nodes-table"):
                assert page.locator(el).is_visible()

            shot = page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            ARTIFACTS.mkdir(exist_ok=True)
            (ARTIFACTS / "dashboard.png").write_bytes(shot)
            assert (tmp_path / "dashboard.png").stat().st_size > 10000
            assert not errors, errors
        finally:
            browser.close()
