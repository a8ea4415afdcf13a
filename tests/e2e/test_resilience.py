"""Routes survive a Caddy restart, tls/ask answers from the routing truth, and a restarted
``forge up`` brings the live release back without a push."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import httpx
import pytest

from tests.e2e.harness import Forge, Remote, push_payload, wait_for

pytestmark = [pytest.mark.e2e]


def caddy_pid(forge: Forge) -> int | None:
    out = subprocess.run(["pgrep", "-f", f"caddy run --config {forge.data}/caddy/config.json"],
                         capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else None



@pytest.fixture(scope="module")
def live_app(forge: Forge) -> str:
    remote = Remote(forge.root, "acme/steady")
    with forge.client as c:
        r = c.post("/api/v1/apps", json={"apiVersion": "forge/v1", "kind": "App", "metadata": {"name": "steady"},
                                         "spec": {"repo": "acme/steady", "domains": ["steady.example.com"]}})
        assert r.status_code == 201, r.text
    r = forge.webhook("push", push_payload("acme/steady", "refs/heads/main", remote.app_release("steady", "s1")))
    assert r.status_code == 202, r.text
    forge.wait_phase("steady-1", {"Live"})
    wait_for(lambda: forge.serves("steady.localhost", "s1"), 10, "steady to serve")
    return "steady"


@pytest.mark.parametrize("host,code", [
    ("steady.localhost", 200), ("steady.example.com", 200), ("STEADY.localhost", 200),
    ("nobody.localhost", 404), ("steady.other.org", 404), ("bad_name!.localhost", 404), ("", 404),
    ("a" * 300 + ".localhost", 404),
], ids=["app-host", "custom-domain", "case", "unknown-app", "other-domain", "malformed", "empty", "too-long"])
def test_tls_ask_answers_only_for_live_hosts(forge: Forge, live_app: str, host: str, code: int) -> None:
    """tls/ask answers 200 only for hosts of apps with a live release, 404 for all else."""
    r = httpx.get(f"{forge.api}/api/v1/tls/ask", params={"domain": host}, timeout=5)
    assert r.status_code == code, r.text


def test_tls_ask_refuses_an_app_without_a_live_release(forge: Forge) -> None:
    """An app registered but never live is not a host Caddy may get a certificate for."""
    with forge.client as c:
        c.post("/api/v1/apps", json={"apiVersion": "forge/v1", "kind": "App", "metadata": {"name": "dormant"},
                                     "spec": {"repo": "acme/dormant"}})
    assert httpx.get(f"{forge.api}/api/v1/tls/ask", params={"domain": "dormant.localhost"}, timeout=5).status_code == 404


def test_routes_come_back_after_caddy_restarts(forge: Forge, live_app: str) -> None:
    """Caddy killed: forge up restarts it, and the router restores the routes within 5 s of it answering."""
    old = caddy_pid(forge)
    assert old is not None
    os.kill(old, signal.SIGKILL)
    new = wait_for(lambda: (p := caddy_pid(forge)) and p != old and p, 20, "caddy to be restarted")
    wait_for(lambda: _admin_up(forge), 10, "caddy admin to answer")
    t0 = time.monotonic()
    wait_for(lambda: forge.serves("steady.localhost", "s1"), 5, "routes to be restored")
    assert new != old
    print(f"routes restored {time.monotonic() - t0:.2f}s after the new caddy answered")


def _admin_up(forge: Forge) -> bool:
    try:
        return httpx.get(f"http://{forge.caddy_admin}/config/", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_forge_up_restart_brings_the_live_release_back(forge: Forge, live_app: str) -> None:
    """forge up stopped (apps included) and started again serves the live release with no new push."""
    forge.stop()
    with pytest.raises(httpx.HTTPError):
        forge.through_caddy("steady.localhost")
    forge.start()
    wait_for(lambda: forge.serves("steady.localhost", "s1"), 60, "the live release to serve again")
    assert [d["metadata"]["name"] for d in forge.list("deployments", "forge.dev/app=steady")] == ["steady-1"]
