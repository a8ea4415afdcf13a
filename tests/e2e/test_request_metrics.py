"""Request metrics through a real ``forge up`` (#25): an app answering some 500s, reached at its
own host and at a custom domain, is counted exactly by status class under one label set
(app, live release) on the proxy's metrics endpoint, with its latency histogram; a host no app
serves is counted apart."""

from __future__ import annotations

import re
from collections import Counter

import httpx
import pytest

from forge.proxy.caddy import NOT_FOUND_BODY
from tests.e2e.harness import MANIFEST, Forge, Remote, wait_for
from tests.e2e.test_push_to_live import push, register

pytestmark = [pytest.mark.e2e]

APP_PY = r"""
import os, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        code = 500 if self.path.startswith("/fail") else 200
        if self.path.startswith("/slow"):
            time.sleep(0.3)
        body = b"v1\n"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""


def scrape(forge: Forge) -> str:
    try:
        return httpx.get(f"http://{forge.proxy_metrics}/metrics", timeout=5).text
    except httpx.HTTPError:
        return ""


def value(text: str, name: str, **labels: str) -> float:
    """The sample ``name{labels}`` (labels in any order); 0 when absent."""
    for m in re.finditer(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$", text, re.M):
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if got == labels:
            return float(m.group(2))
    return 0.0


def by_class(text: str, release: str) -> dict[str, int]:
    out = {}
    for cls in ("1xx", "2xx", "3xx", "4xx", "5xx"):
        n = value(text, "forge_app_http_requests_total", app="reqs", release=release, code_class=cls)
        if n:
            out[cls] = int(n)
    return out


def test_requests_through_caddy_are_counted_exactly_per_app_and_release(forge: Forge) -> None:
    """Every response of the app — its own host and a custom domain alike — is in the proxy's
    counters exactly once, by class, under (app, live release); latency buckets are there; the
    unknown host is only in the unrouted counter."""
    assert f"proxy http://{forge.proxy_metrics}/metrics" in forge.log.read_text()  # printed by forge up
    remote = Remote(forge.root, "acme/reqs")
    register(forge, "reqs", "acme/reqs", domains=["www.reqs.test"])
    manifest = MANIFEST.format(name="reqs", version="v1", extra="", min_ready="1s")
    commit = remote.commit({"app.py": APP_PY, "forge.yaml": manifest}, "v1")
    assert push(forge, "acme/reqs", commit) == ["reqs-1"]
    assert forge.wait_phase("reqs-1", {"Live", "Failed"})["status"]["phase"] == "Live"

    sent: Counter[str] = Counter()  # what the app (or Caddy, for its routed host) answered

    def get(host: str, path: str = "/") -> httpx.Response:
        r = forge.through_caddy(host, path)
        if not (r.status_code == 404 and r.text == NOT_FOUND_BODY):  # the catch-all: not the app's
            sent[f"{r.status_code // 100}xx"] += 1
        return r

    wait_for(lambda: get("reqs.localhost").status_code == 200, 20, "reqs.localhost to be served")
    wait_for(lambda: get("www.reqs.test").status_code == 200, 20, "www.reqs.test to be served")
    unrouted_before = value(scrape(forge), "forge_proxy_unrouted_requests_total")
    for _ in range(9):
        assert get("reqs.localhost").status_code == 200
    for _ in range(4):
        assert get("www.reqs.test:80", "/fail").status_code == 500
    for _ in range(3):
        assert get("reqs.localhost", "/fail?x=1").status_code == 500
    for _ in range(2):
        assert get("www.reqs.test", "/slow").status_code == 200
    assert forge.through_caddy("nobody.reqs.test").status_code == 404
    assert forge.through_caddy("WWW.reqs.test").status_code == 404  # Caddy's lookup is case-sensitive

    want = dict(sent)
    text = wait_for(
        lambda: (t := scrape(forge)) and by_class(t, "reqs-1") == want and t, 20, f"the proxy to count {want}"
    )
    assert by_class(text, "reqs-1") == want  # exactly: nothing counted twice, nothing lost
    assert "www.reqs.test" not in text  # labels are apps, never hosts
    total = sum(want.values())
    hist = "forge_app_http_request_duration_seconds_bucket"
    assert value(text, hist, app="reqs", release="reqs-1", le="+Inf") == total
    slow = value(text, hist, app="reqs", release="reqs-1", le="0.5") - value(
        text, hist, app="reqs", release="reqs-1", le="0.25"
    )
    assert slow >= 2  # the two /slow requests (0.3 s) sit in (0.25, 0.5]
    assert value(text, "forge_app_http_request_duration_seconds_count", app="reqs", release="reqs-1") == total
    wait_for(
        lambda: value(scrape(forge), "forge_proxy_unrouted_requests_total") >= unrouted_before + 2,
        10,
        "the unknown host to be counted apart",
    )
