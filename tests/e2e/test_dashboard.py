"""The web dashboard in a real browser (Debian's chromium driven by Playwright) against a real forge up."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from forge import signin
from forge.appmetrics import RequestSample
from forge.clock import SystemClock, iso
from tests.e2e.harness import ADMIN_TOKEN, Forge, Remote, push_payload, wait_for

pytestmark = [pytest.mark.e2e]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def two_releases(forge: Forge) -> Remote:
    remote = Remote(forge.root, "acme/dash")
    with forge.client as c:
        r = c.post("/api/v1/apps", json={"apiVersion": "forge/v1", "kind": "App", "metadata": {"name": "dash"},
                                         "spec": {"repo": "acme/dash"}})
        assert r.status_code == 201, r.text
    for n, version in ((1, "d1"), (2, "d2")):
        r = forge.webhook("push", push_payload("acme/dash", "refs/heads/main", remote.app_release("dash", version)))
        assert r.status_code == 202, r.text
        forge.wait_phase(f"dash-{n}", {"Live"})
    return remote


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (make setup installs it)")
def test_dashboard_shows_live_app_rolls_back_and_streams_the_event(
    forge: Forge, two_releases: Remote, tmp_path: Path
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


WORKER = 'processes:\n  worker: {command: "exec sleep 100000", replicas: 1}\n'
XSS = '<img src=x onerror="window.__xss=1">'


def _seed_metrics(forge: Forge, release: str, start: int) -> dict[int, tuple[int, int]]:
    """Request samples for dash at three 10 s points before this install started (so no real
    traffic shares them); {t: (requests, 5xx)}."""
    want: dict[int, tuple[int, int]] = {}
    samples = []
    for k, (ok, bad) in enumerate(((5, 0), (7, 1), (9, 2))):
        at = start + 10 * k
        s = RequestSample(app="dash", release=release, at=at)
        for _ in range(ok):
            s.observe(200, 0.02)
        for _ in range(bad):
            s.observe(500, 0.4)
        samples.append(s.to_json())
        want[at] = (ok + bad, bad)
    with forge.client as c:
        r = c.post("/api/v1/metrics/requests", json={"proxy": "e2e", "id": f"e2e-{start}", "samples": samples})
        assert r.status_code == 200 and r.json()["accepted"] == 3, r.text
    return want


def _refused(forge: Forge, method: str, path: str, body: dict[str, Any]) -> str:
    """The API's message for a request it refuses (and so changes nothing)."""
    with forge.client as c:
        r = c.request(method, path, json=body)
    assert r.status_code >= 400, r.text
    return str(r.json()["message"])


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (make setup installs it)")
def test_dashboard_actions_logs_events_build_log_and_graphs(forge: Forge, two_releases: Remote) -> None:
    """Through a one-time sign-in link: each action asks first and does what the CLI's endpoint
    does (deploy a ref, scale per process type, env set/unset, a secret that is never shown
    again, domains add/remove), a refusal shows the API's message as it is; logs hide the health
    checks until asked and filter; Events come a page at a time; a release's build log opens;
    the graphs hold the request series the API has (and take a new point while open); hostile
    text stays text."""
    from playwright.sync_api import expect, sync_playwright

    app_url = "/api/v1/apps/dash"
    live = forge.get("apps", "dash")["status"]["liveDeployment"]
    sha3 = two_releases.app_release("dash", "d3", extra=WORKER)  # pushed, no webhook: deployed from the page
    grid0 = (int(time.time()) // 10) * 10 - 1500
    want = _seed_metrics(forge, live, grid0)
    with forge.client as c:
        r = c.post("/api/v1/apps", json={"metadata": {"name": "other"},
                                         "spec": {"repo": "acme/other", "domains": ["taken.example.test"]}})
        assert r.status_code == 201, r.text
        old = time.time() - 7200
        for i in range(25):  # older than every real Event: they are the later pages
            r = c.post("/api/v1/events", json={"metadata": {"name": f"dash.seed-{i:02d}", "labels": {"forge.dev/app": "dash"}},
                                               "spec": {"involvedObject": {"kind": "App", "name": "dash"}, "reason": "Seeded",
                                                        "message": f"seeded {i}", "lastTime": iso(old - i)}})
            assert r.status_code == 201, r.text
        r = c.post("/api/v1/events", json={"metadata": {"name": "dash.hostile", "labels": {"forge.dev/app": "dash"}},
                                           "spec": {"involvedObject": {"kind": "App", "name": "dash"}, "reason": "Hostile",
                                                    "message": XSS, "lastTime": iso(time.time())}})
        assert r.status_code == 201, r.text
    bad_ref = _refused(forge, "POST", f"{app_url}/deploy", {"ref": "no-such-branch"})
    bad_key = _refused(forge, "PATCH", app_url, {"spec": {"env": {"1BAD": "x"}}})
    taken = _refused(forge, "PATCH", app_url, {"spec": {"domains": ["taken.example.test"]}})
    releases_before = len(forge.list("deployments", "forge.dev/app=dash"))

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("dialog", lambda d: d.dismiss())  # a stray alert() must not hang the test
            page.goto(f"{forge.api}/ui#signin={signin.mint(forge.data, SystemClock())}")
            expect(page.locator("tr[data-app=dash]")).to_be_visible(timeout=15000)
            page.evaluate("location.hash = '#/apps/dash'")
            expect(page.locator("tr[data-release=dash-1]")).to_be_visible(timeout=15000)

            # graphs: the request and 5xx series as the API holds them, release markers, and live
            expect(page.locator("figure[data-graph=requests]")).to_have_attribute("data-points", re.compile(r"^[1-9]"), timeout=15000)
            data = page.evaluate("({r: window.forgeGraphs.requests.data, e: window.forgeGraphs.errors.data, "
                                 "p: window.forgeGraphs.p95.data, n: window.forgeGraphs.restarts.data[0].length, "
                                 "m: window.forgeGraphMarks})")
            got = {t: (r, e, p95) for t, r, e, p95 in zip(data["r"][0], data["r"][1], data["e"][1], data["p"][1], strict=True)}
            for t, (total, errors) in want.items():
                assert got[t][:2] == (total, errors), (t, got.get(t))
                assert got[t][2] is not None and got[t][2] > 0
            assert sum(v for t, v in zip(data["r"][0], data["r"][1], strict=True) if t < grid0 + 60) == 24
            assert data["n"] == len(data["r"][0]) and {"cpu", "memory"} <= set(page.evaluate("Object.keys(window.forgeGraphs)"))
            assert live in {name for _, name in data["m"]}, data["m"]
            more = _seed_metrics(forge, live, grid0 + 100)  # a new point while the page is open

            # deploy a ref: Cancel does nothing; OK makes the release; a ref the remote lacks is refused verbatim
            page.fill("#deploy-ref", "main")
            page.click("#deploy-form button[type=submit]")
            expect(page.locator("#confirm")).to_be_visible()
            expect(page.locator("#confirm-text")).to_have_text("Deploy main to dash?")
            page.click("#confirm-cancel")
            page.fill("#deploy-ref", "no-such-branch")
            page.click("#deploy-form button[type=submit]")
            page.click("#confirm-ok")
            expect(page.locator("#action-error")).to_have_text(bad_ref, timeout=15000)
            assert len(forge.list("deployments", "forge.dev/app=dash")) == releases_before
            page.fill("#deploy-ref", "main")
            page.click("#deploy-form button[type=submit]")
            page.click("#confirm-ok")
            expect(page.locator("#action-result")).to_contain_text("created", timeout=15000)
            new = f"dash-{releases_before + 1}"
            expect(page.locator(f"tr[data-release={new}]")).to_contain_text(sha3[:7], timeout=15000)

            # build log of the first release, from the release list
            page.click("tr[data-release=dash-1] button.buildlog")
            expect(page.locator("#buildlog-text")).to_contain_text("building d1", timeout=15000)
            page.click("#buildlog-close")

            # Events: one page (newest first, hostile text as text), then the older ones on asking
            events = page.locator("#app-events")
            expect(events).to_contain_text(XSS, timeout=15000)
            expect(page.locator("tr[data-event='dash.seed-24']")).to_have_count(0)
            more_button = page.locator("#events-more")
            for _ in range(6):  # ~50 Events, 20 a page
                if more_button.is_hidden():
                    break
                before = more_button.inner_text()
                more_button.click()
                expect(more_button).not_to_have_text(before, timeout=15000)  # the page arrived
            expect(more_button).to_be_hidden()
            for i in range(25):
                expect(page.locator(f"tr[data-event='dash.seed-{i:02d}']")).to_have_count(1)

            # logs: health checks hidden until asked for; the filter narrows what is shown
            logs = page.locator("#logs")
            forge.through_caddy("dash.localhost", "/visible-path")
            expect(logs).to_contain_text("request /visible-path", timeout=30000)
            assert "request /health" not in logs.inner_text()
            page.check("#log-probes")
            expect(logs).to_contain_text("request /health", timeout=30000)
            page.fill("#log-filter", "visible-path")
            expect(logs).not_to_contain_text("request /health")
            assert all("visible-path" in ln for ln in logs.inner_text().splitlines() if ln.strip())

            # scale per process type, once the release with a worker is live
            forge.wait_phase(new, {"Live"})
            worker = page.locator("#scale-inputs input[data-proc=worker]")
            expect(worker).to_have_value("1", timeout=15000)
            worker.fill("0")
            page.fill("#scale-inputs input[data-proc=web]", "2")
            page.click("#scale-form button[type=submit]")
            expect(page.locator("#confirm-text")).to_have_text("Scale dash: web=2, worker=0?")
            page.click("#confirm-ok")
            wait_for(lambda: (lambda s: s["replicas"] == 2 and s["processes"] == {"worker": 0})(forge.get("apps", "dash")["spec"]),
                     15, "the scale to reach the App")

            # env: set (the value sent as typed, listed by name only), a bad name refused verbatim, unset
            page.fill("#env-key", "GREETING")
            page.fill("#env-value", XSS)
            page.click("#env-form button[type=submit]")
            page.click("#confirm-ok")
            expect(page.locator("tr[data-env=GREETING]")).to_be_visible(timeout=15000)
            assert forge.get("apps", "dash")["spec"]["env"] == {"GREETING": XSS}
            assert XSS not in page.locator("#env-rows").inner_html() and page.input_value("#env-value") == ""
            page.fill("#env-key", "1BAD")
            page.click("#env-form button[type=submit]")
            page.click("#confirm-ok")
            expect(page.locator("#action-error")).to_have_text(bad_key, timeout=15000)
            page.click("tr[data-env=GREETING] button.env-unset")
            page.click("#confirm-ok")
            expect(page.locator("tr[data-env=GREETING]")).to_have_count(0, timeout=15000)
            assert "GREETING" not in (forge.get("apps", "dash")["spec"].get("env") or {})

            # a secret: stored, listed by name, its value gone from the page
            value = "s3cr3t-e2e-" + str(grid0)
            page.fill("#secret-key", "API_TOKEN")
            page.fill("#secret-value", value)
            page.click("#secret-form button[type=submit]")
            page.click("#confirm-ok")
            expect(page.locator("tr[data-secret=API_TOKEN]")).to_be_visible(timeout=15000)
            assert forge.get("secrets", "dash")["status"]["keys"] == ["API_TOKEN"]
            assert page.input_value("#secret-value") == "" and value not in page.content()

            # domains: add, one another app owns refused verbatim, remove
            page.fill("#domain-name", "www.dash-e2e.test")
            page.click("#domain-form button[type=submit]")
            page.click("#confirm-ok")
            expect(page.locator("tr[data-domain='www.dash-e2e.test']")).to_be_visible(timeout=15000)
            page.fill("#domain-name", "taken.example.test")
            page.click("#domain-form button[type=submit]")
            page.click("#confirm-ok")
            expect(page.locator("#action-error")).to_have_text(taken, timeout=15000)
            assert forge.get("apps", "dash")["spec"]["domains"] == ["www.dash-e2e.test"]
            page.click("tr[data-domain='www.dash-e2e.test'] button.domain-remove")
            page.click("#confirm-ok")
            expect(page.locator("tr[data-domain='www.dash-e2e.test']")).to_have_count(0, timeout=15000)
            assert forge.get("apps", "dash")["spec"]["domains"] == []

            # the graph took the point posted while it was open (its next refresh, ≤ 10 s)
            t_new = max(more)
            wait_for(lambda: t_new in dict(zip(*page.evaluate("window.forgeGraphs.requests.data"), strict=True))
                     and dict(zip(*page.evaluate("window.forgeGraphs.requests.data"), strict=True))[t_new] == more[t_new][0],
                     30, "the open graph to show the new point")
            assert page.evaluate("window.__xss") is None
            # and the memory the agent samples from the Instances' cgroups (every 10 s)
            wait_for(lambda: any(v for v in page.evaluate("window.forgeGraphs.memory.data[1]") if v),
                     45, "the memory graph to show the agent's samples")

            # without the chart library the page still works and says why it has no graphs
            page.close()  # its streams go: the API holds a bounded number open
            bare = browser.new_page()
            bare.route("**/ui/uPlot.iife.min.js", lambda route: route.fulfill(status=404, body="gone"))
            bare.goto(f"{forge.api}/ui")
            bare.fill("#token", ADMIN_TOKEN)
            bare.click("#signin-form button[type=submit]")
            expect(bare.locator("tr[data-app=dash]")).to_be_visible(timeout=15000)
            bare.evaluate("location.hash = '#/apps/dash'")
            expect(bare.locator("#graphs-note")).to_contain_text("make setup", timeout=15000)
            expect(bare.locator("tr[data-release=dash-1]")).to_be_visible()
            # the install's Events page is paged too: the newest page, the seeded ones later
            bare.evaluate("location.hash = '#/events'")
            expect(bare.locator("#events-more")).to_be_visible(timeout=15000)
            expect(bare.locator("tr[data-event='dash.seed-24']")).to_have_count(0)
            assert bare.locator("#events tr").count() >= 20
        finally:
            browser.close()


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (make setup installs it)")
def test_dashboard_watches_resume_when_the_server_ends_them(tmp_path: Path) -> None:
    """An API that ends every stream after 2 s (as any ends them after timeoutSeconds, or on a
    restart): the app page watches on from the last revision it saw, so a release, an App change
    and an Event made after several such ends still show up."""
    from playwright.sync_api import expect, sync_playwright

    from tests.api.conftest import TOKEN, start_server, stop_server

    server = start_server(tmp_path, extra_args=["--max-stream-seconds", "2"])
    try:
        with server.client() as c, sync_playwright() as p:
            assert c.post("/api/v1/apps", json={"metadata": {"name": "resume"}, "spec": {"repo": "acme/resume"}}).status_code == 201
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                watches: list[str] = []
                page.on("request", lambda r: watches.append(r.url) if "/api/v1/events?" in r.url and "watch=true" in r.url else None)
                page.goto(f"{server.url}/ui")
                page.fill("#token", TOKEN)
                page.click("#signin-form button[type=submit]")
                expect(page.locator("tr[data-app=resume]")).to_be_visible(timeout=15000)
                page.evaluate("location.hash = '#/apps/resume'")
                expect(page.locator("#releases")).to_contain_text("no releases yet", timeout=15000)
                # page.evaluate lets Playwright deliver the request events it has seen meanwhile
                wait_for(lambda: page.evaluate("0") == 0 and len(watches) >= 3, 30, "the Event watch to be resumed twice")
                r = c.post("/api/v1/deployments", json={
                    "metadata": {"name": "resume-1", "labels": {"forge.dev/app": "resume"}},
                    "spec": {"app": "resume", "repo": "acme/resume", "commit": "a" * 40, "trigger": {"type": "api"}}})
                assert r.status_code == 201, r.text
                assert c.patch("/api/v1/apps/resume", json={"spec": {"domains": ["late.example.test"]}}).status_code == 200
                r = c.post("/api/v1/events", json={"metadata": {"name": "resume.late", "labels": {"forge.dev/app": "resume"}},
                                                   "spec": {"involvedObject": {"kind": "App", "name": "resume"},
                                                            "reason": "Late", "message": "after the streams ended"}})
                assert r.status_code == 201, r.text
                expect(page.locator("tr[data-release=resume-1]")).to_be_visible(timeout=15000)
                expect(page.locator("tr[data-domain='late.example.test']")).to_be_visible(timeout=15000)
                expect(page.locator("tr[data-event='resume.late']")).to_contain_text("after the streams ended", timeout=15000)
            finally:
                browser.close()
    finally:
        stop_server(server)
