"""The web dashboard in a real browser (Debian's chromium driven by Playwright) against a real forge up."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.e2e.harness import ADMIN_TOKEN, Forge, Remote, push_payload, wait_for

pytestmark = [pytest.mark.e2e]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def two_releases(forge: Forge) -> str:
    remote = Remote(forge.root, "acme/dash")
    with forge.client as c:
        r = c.post("/api/v1/apps", json={"apiVersion": "forge/v1", "kind": "App", "metadata": {"name": "dash"},
                                         "spec": {"repo": "acme/dash"}})
        assert r.status_code == 201, r.text
    for n, version in ((1, "d1"), (2, "d2")):
        r = forge.webhook("push", push_payload("acme/dash", "refs/heads/main", remote.app_release("dash", version)))
        assert r.status_code == 202, r.text
        forge.wait_phase(f"dash-{n}", {"Live"})
    return "dash"


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (make setup installs it)")
def test_dashboard_shows_live_app_rolls_back_and_streams_the_event(
    forge: Forge, two_releases: str, tmp_path: Path
) -> None:
    """Sign in, see the app Live, roll back with confirmation, and see the Event stream in."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{forge.api}/ui")
            page.fill("#token", ADMIN_TOKEN)
            page.click("#signin-form button[type=submit]")
            row = page.locator("tr[data-app=dash]")
            expect(row.locator("td.live")).to_have_text("dash-2", timeout=15000)
            expect(row).to_contain_text("healthy")
            row.locator("a").first.click()
            expect(page.locator("tr[data-release=dash-2] .phase")).to_have_text("Live", timeout=15000)
            page.click("#rollback-prev")
            expect(page.locator("#confirm")).to_be_visible()
            page.click("#confirm-ok")
            expect(page.locator("tr[data-release=dash-3]")).to_be_visible(timeout=15000)
            # the Event of the rollback release streams into the open page
            expect(page.locator("#app-events")).to_contain_text("dash-3", timeout=60000)
            # its processes, with their type, stream in too (workers, cron and one-off runs alike)
            expect(page.locator("tr[data-instance=dash-3-0]")).to_contain_text("web", timeout=30000)
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            page.evaluate("location.hash = '#/nodes'")  # the machines: status, capacity, isolation
            node = page.locator(f"tr[data-node='{forge.node}']")
            expect(node).to_contain_text("Ready", timeout=15000)
            expect(node).to_contain_text("network netns")
        finally:
            browser.close()
    assert (tmp_path / "dashboard.png").stat().st_size > 1000
    dep = forge.wait_phase("dash-3", {"Live"})
    assert dep["spec"]["trigger"]["type"] == "rollback" and dep["spec"]["rollbackOf"] == "dash-1"
    wait_for(lambda: forge.through_caddy("dash.localhost").text.startswith("d1"), 10, "rollback to serve d1")
