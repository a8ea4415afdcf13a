"""``forge github connect``: GitHub's manifest flow end to end — the CLI's page posts the manifest,
"GitHub" (the fake, with a real RSA key) sends the browser back with a code, the API exchanges it
and keeps the key and webhook secret sealed; the stored App then mints installation tokens and
its webhook secret signs deliveries."""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import os
import re
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from forge.clock import SystemClock
from forge.config import Config
from forge.github.auth import app_tokens
from forge.models import GithubApp
from forge.store.sqlite import SqliteStore
from tests.api.conftest import TOKEN, start_server, stop_server
from tests.github.fakegithub import FakeGithub, Installation
from tests.github.openapi import example_response, needs_octokit

pytestmark = needs_octokit

SECRET_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="  # 32 bytes, base64
HOOK_SECRET = "whsec-from-github-0123456789"


@pytest.fixture
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def fake(key: rsa.RSAPrivateKey) -> Iterator[FakeGithub]:
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    gh = FakeGithub(
        clock=SystemClock(),
        app_id="5150",
        app_public_key=pub,
        installations=[Installation(9, ["acme/hello"])],
    ).start()
    yield gh
    gh.stop()


def conversion(key: rsa.RSAPrivateKey) -> dict:
    made = example_response("/app-manifests/{code}/conversions", "post", "201")
    made.update(
        id=5150,
        slug="forge-test",
        webhook_secret=HOOK_SECRET,
        pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ).decode(),
    )
    return made


def test_connect_through_the_manifest_flow(tmp_path: Path, fake: FakeGithub, key: rsa.RSAPrivateKey) -> None:
    """Page → GitHub → callback → exchange: the App is stored sealed, mints tokens, signs webhooks."""
    env = {"FORGE_GITHUB_API_URL": fake.url, "FORGE_SECRET_KEY": SECRET_KEY}
    server = start_server(tmp_path, workers=1, env=env)
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "forge",
            "github",
            "connect",
            "--github-url",
            "https://github.example",
            "--org",
            "acme",
            "--url",
            "https://forge.example",
            "--timeout",
            "60",
        ],
        env={**os.environ, "FORGE_URL": server.url, "FORGE_ADMIN_TOKEN": TOKEN},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert cli.stdout is not None
        ready, _, _ = select.select([cli.stdout], [], [], 30)
        assert ready, "the CLI printed nothing"
        first = cli.stdout.readline()
        page_url = re.search(r"(http://127\.0\.0\.1:\d+/)", first)
        assert page_url, first
        page = httpx.get(page_url.group(1), timeout=5).text
        action = html.unescape(re.search(r'action="([^"]+)"', page).group(1))
        manifest = json.loads(html.unescape(re.search(r'name=manifest value="([^"]+)"', page).group(1)))
        assert action.startswith("https://github.example/organizations/acme/settings/apps/new?state=")
        assert manifest["hook_attributes"]["url"] == "https://forge.example/api/v1/webhook/github"
        assert set(manifest["default_events"]) >= {"push", "pull_request", "issue_comment"}
        assert manifest["default_permissions"]["deployments"] == "write"
        state = parse_qs(urlsplit(action).query)["state"][0]
        # "GitHub": a wrong state is refused; then the real redirect with a fresh code
        assert (
            httpx.get(
                manifest["redirect_url"], params={"code": "x", "state": "forged"}, timeout=5
            ).status_code
            == 400
        )
        fake.manifest_codes["c0de42"] = conversion(key)
        r = httpx.get(manifest["redirect_url"], params={"code": "c0de42", "state": state}, timeout=5)
        assert r.status_code == 200
        out, _ = cli.communicate(timeout=60)
        assert cli.returncode == 0, first + out
        assert "forge-test" in out and "5150" in out
        assert "PRIVATE KEY" not in first + out and HOOK_SECRET not in first + out

        with server.client() as c:
            shown = c.get("/api/v1/github/app").json()
            assert shown == {
                "appId": 5150,
                "slug": "forge-test",
                "htmlUrl": shown["htmlUrl"],
                "owner": shown["owner"],
            }
            # a used code is refused
            again = c.post("/api/v1/github/connect", json={"code": "c0de42"})
            assert again.status_code == 404, again.text
            # the App's webhook secret now authenticates deliveries
            body = json.dumps({"zen": "hi", "hook_id": 1}).encode()
            sig = "sha256=" + hmac.new(HOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
            ping = c.post(
                "/api/v1/webhook/github",
                content=body,
                headers={
                    "X-GitHub-Event": "ping",
                    "X-Hub-Signature-256": sig,
                    "Content-Type": "application/json",
                },
            )
            assert ping.status_code == 200, ping.text
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        stop_server(server)
    store = SqliteStore(str(tmp_path / "forge.db"))
    try:
        record = store.get(GithubApp, "github")
        assert record.spec.private_key.startswith("fsec1:") and record.spec.webhook_secret.startswith(
            "fsec1:"
        )
        assert "PRIVATE" not in record.model_dump_json()
        config = Config.from_env(data_dir=tmp_path, env={**env, "FORGE_ADMIN_TOKEN": TOKEN})
        tokens = app_tokens(config, SystemClock(), store)
        assert tokens is not None and tokens.token_for("acme/hello")[0] == "installation:9"
        tokens.close()
    finally:
        store.close()
    assert fake.violations == []
    assert HOOK_SECRET not in (tmp_path / "server.log").read_text()
