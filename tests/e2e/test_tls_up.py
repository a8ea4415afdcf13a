"""``forge up --tls internal``: HTTPS with Caddy's internal CA, certificates only for hosts tls/ask approves."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import (
    ADMIN_TOKEN,
    WEBHOOK_SECRET,
    Forge,
    Remote,
    free_port,
    https_get,
    push_payload,
    wait_for,
)

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def tls_forge() -> Iterator[tuple[Forge, int]]:
    if shutil.which("caddy") is None:
        pytest.skip("caddy is not installed (make setup)")
    root = Path(tempfile.mkdtemp(prefix="forge-e2e-tls-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_")}
    env.update(FORGE_ADMIN_TOKEN=ADMIN_TOKEN, FORGE_GITHUB_WEBHOOK_SECRET=WEBHOOK_SECRET,
               FORGE_GIT_URL_TEMPLATE=f"file://{root}/remotes/{{full_name}}.git", PYTHONUNBUFFERED="1")
    https_port = free_port()
    f = Forge(root=root, data=root / "data", api=f"http://127.0.0.1:{free_port()}", http=f"http://127.0.0.1:{free_port()}",
              caddy_admin=f"127.0.0.1:{free_port()}", env=env,
              extra_args=["--tls", "internal", "--https-listen", f"127.0.0.1:{https_port}"])
    f.start()
    try:
        yield f, https_port
    finally:
        f.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_forge_up_tls_internal_serves_https_for_live_apps_only(tls_forge: tuple[Forge, int]) -> None:
    """An app with a live release is served over HTTPS (verified against Caddy's root); others get no certificate."""
    forge, https_port = tls_forge
    remote = Remote(forge.root, "acme/secure")
    with forge.client as c:
        r = c.post("/api/v1/apps", json={"apiVersion": "forge/v1", "kind": "App", "metadata": {"name": "secure"},
                                         "spec": {"repo": "acme/secure"}})
        assert r.status_code == 201, r.text
    r = forge.webhook("push", push_payload("acme/secure", "refs/heads/main", remote.app_release("secure", "t1")))
    assert r.status_code == 202, r.text
    forge.wait_phase("secure-1", {"Live"})
    root = forge.data / "caddy" / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"

    def served() -> tuple[str, str] | None:
        try:
            return https_get(https_port, "secure.localhost", root) if root.exists() else None
        except (OSError, ssl.SSLError):
            return None

    status, body = wait_for(served, 20, "HTTPS for secure.localhost")
    assert status == "HTTP/1.1 200 OK" and body.startswith("t1")
    with pytest.raises(ssl.SSLError) as refused:
        https_get(https_port, "nobody.localhost", root)
    assert not isinstance(refused.value, ssl.SSLCertVerificationError)  # no certificate was issued at all
    assert forge.get("apps", "secure")["status"]["url"].startswith("https://secure.localhost")


def test_forge_domains_shows_dns_target_and_certificate_state(tls_forge: tuple[Forge, int]) -> None:
    """forge domains APP: the default host's certificate (issued by Caddy's internal CA after the
    HTTPS request above) and a custom domain's (pending), each with where to point DNS."""
    forge, https_port = tls_forge
    with forge.client as c:
        app = c.get("/api/v1/apps/secure").json()
        app["spec"]["domains"] = ["www.example.org"]
        c.put("/api/v1/apps/secure", json={k: app[k] for k in ("apiVersion", "kind", "metadata", "spec")}).raise_for_status()
    env = {**forge.env, "FORGE_URL": forge.api, "FORGE_DATA_DIR": "/nonexistent"}
    r = subprocess.run([sys.executable, "-m", "forge", "domains", "secure", "-o", "json"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    items = {d["domain"]: d for d in json.loads(r.stdout)["items"]}
    assert items["secure.localhost"]["certificate"]["state"] == "issued", items
    assert items["secure.localhost"]["certificate"]["issuer"] == "local"
    assert items["www.example.org"]["certificate"]["state"] == "pending", items
    assert "on the first HTTPS request" in items["www.example.org"]["certificate"]["message"]
    assert "A/AAAA record" in items["www.example.org"]["dnsTarget"]  # FORGE_DOMAIN=localhost: no name to CNAME to
    r = subprocess.run([sys.executable, "-m", "forge", "domains", "secure"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "POINT DNS AT" in r.stdout and "valid until" in r.stdout, r.stdout + r.stderr
