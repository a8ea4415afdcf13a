"""``/gitcredential`` with a GitHub App: an Instance's agent gets the installation token for a
repository no RepoCredential covers; a repository without the App is 404 (fetched anonymously)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from forge.clock import SystemClock
from tests.api.conftest import COMMIT1, make_api
from tests.github.fakegithub import FakeGithub, Installation
from tests.github.openapi import needs_octokit

pytestmark = needs_octokit

MINTED = "ghs_MintedForTheAgent0123456789abcdefAB"


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[FakeGithub, Path]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "app.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    gh = FakeGithub(
        clock=SystemClock(),
        app_id="77",
        app_public_key=pub,
        installations=[Installation(5, ["acme/private"])],
        mint=lambda: MINTED,
    ).start()
    yield gh, pem
    gh.stop()


def _instance(name: str, repo: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"forge.dev/app": "hello", "forge.dev/node": "n1"}},
        "spec": {"app": "hello", "deployment": "hello-1", "repo": repo, "commit": COMMIT1, "node": "n1"},
    }


def test_installation_token_for_the_agent(tmp_path: Path, fake: tuple[FakeGithub, Path]) -> None:
    """No RepoCredential: the App's installation token for its repository; 404 for a repo without it."""
    gh, pem = fake
    api = make_api(
        tmp_path / "api", github_api_url=gh.url, github_app_id="77", github_app_private_key=str(pem)
    )
    try:
        node = api.req("POST", "/api/v1/nodes/n1/token").json["token"]
        api.create("instances", _instance("private-1-0", "acme/private"))
        api.create("instances", _instance("public-1-0", "other/public"))
        r = api.req("GET", "/api/v1/instances/private-1-0/gitcredential", token=node)
        assert r.status_code == 200 and r.json == {"username": "x-access-token", "token": MINTED}
        r = api.req("GET", "/api/v1/instances/public-1-0/gitcredential", token=node)
        assert r.status_code == 404
        assert gh.violations == []
    finally:
        api.store.close()
