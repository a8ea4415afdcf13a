"""Forge as a GitHub App, with a real RS256 key: the fake GitHub verifies the App's JWT with the
public half, mints installation tokens, and a private git remote accepts only such a token."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from forge.clock import FakeClock
from forge.config import Config
from forge.controllers.github import GithubController
from forge.controllers.source import SourceController
from forge.errors import TerminalError
from forge.github.auth import REFRESH_BEFORE, AppTokens
from forge.github.client import GithubError
from forge.models import Deployment, Trigger
from forge.store.base import Store
from tests.controllers.conftest import condition_of
from tests.controllers.test_source import GOOD, push_commit
from tests.githttp import PrivateGitServer
from tests.github.fakegithub import FakeGithub, Installation
from tests.github.openapi import needs_octokit

pytestmark = needs_octokit

APP_ID = "424242"
INSTALL_TOKEN = "ghs_InstallationToken0123456789abcdef00"


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return _key()


def pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture
def fake(clock: FakeClock, key: rsa.RSAPrivateKey) -> Iterator[FakeGithub]:
    gh = FakeGithub(
        clock=clock,
        app_id=APP_ID,
        app_public_key=public(key),
        installations=[Installation(77, ["acme/hello", "acme/secret"]), Installation(88, ["other/thing"])],
    ).start()
    yield gh
    gh.stop()


@pytest.fixture
def app_config(tmp_path: Path, config: Config, fake: FakeGithub, key: rsa.RSAPrivateKey) -> Config:
    path = tmp_path / "app.pem"
    path.write_bytes(pem(key))
    path.chmod(0o600)
    return dataclasses.replace(
        config, github_api_url=fake.url, github_app_id=APP_ID, github_app_private_key=str(path)
    )


def test_installation_tokens_are_minted_and_cached(
    app_config: Config, clock: FakeClock, fake: FakeGithub
) -> None:
    """JWT → installation look-up → token; cached until 5 minutes before it expires; then renewed."""
    tokens = AppTokens.from_file(APP_ID, app_config.github_app_private_key, fake.url, clock)
    scope, first = tokens.token_for("acme/hello")
    assert scope == "installation:77" and first.startswith("ghs_")
    assert [(r.method, r.template, r.auth) for r in fake.requests] == [
        ("GET", "/repos/{owner}/{repo}/installation", "app"),
        ("POST", "/app/installations/{installation_id}/access_tokens", "app"),
    ]
    assert tokens.token_for("acme/secret") == (scope, first), "one installation, one cached token"
    assert [r.template for r in fake.requests[2:]] == ["/repos/{owner}/{repo}/installation"]
    clock.advance(3600 - REFRESH_BEFORE - 5)
    assert tokens.token_for("acme/hello")[1] == first
    assert len(fake.requests) == 3
    clock.advance(10)  # inside the refresh margin: a new token, and a fresh JWT (the first has expired)
    assert tokens.token_for("acme/hello")[1] != first
    assert [r.template for r in fake.requests[3:]] == ["/app/installations/{installation_id}/access_tokens"]
    assert tokens.token_for("other/thing")[0] == "installation:88"
    assert fake.violations == []
    assert "BEGIN" not in repr(tokens)
    tokens.close()


def test_a_wrong_key_is_refused_without_saying_the_key(
    tmp_path: Path, clock: FakeClock, fake: FakeGithub
) -> None:
    """A JWT signed by another key: GitHub says Bad credentials; no key material in the error."""
    other = tmp_path / "other.pem"
    other.write_bytes(pem(_key()))
    tokens = AppTokens.from_file(APP_ID, str(other), fake.url, clock)
    with pytest.raises(GithubError) as err:
        tokens.token_for("acme/hello")
    tokens.close()
    assert err.value.code == 401 and not err.value.transient
    assert "PRIVATE" not in err.value.message and tokens.app_jwt() not in err.value.message


def test_reports_go_out_as_the_installation(
    app_config, store: Store, clock, fake, make_app, make_deployment
) -> None:
    """With the App, releases report with the installation's token; a webhook's installation.id saves the look-up."""
    make_app("hello")
    make_deployment("hello", 1, phase="Pending", trigger=Trigger(type="webhook", installation_id=77))
    ctl = GithubController(store, clock, app_config)
    ctl.reconcile("hello-1")
    assert fake.states_of("hello-1") == ["in_progress"]
    repo_calls = [
        r for r in fake.requests if r.path.startswith("/repos/acme/hello/") and "installation" not in r.path
    ]
    assert repo_calls and {r.auth for r in repo_calls} == {"installation:77"}
    assert not [r for r in fake.requests if r.template == "/repos/{owner}/{repo}/installation"]
    ctl.close()
    assert fake.violations == []


def test_a_repo_without_the_app_is_not_reported(
    app_config, store, clock, fake, make_app, make_deployment
) -> None:
    """The App is not installed on the repository: a Warning Event, no retries."""
    make_app("lonely", repo="nobody/lonely")
    make_deployment("lonely", 1, phase="Pending")
    ctl = GithubController(store, clock, app_config)
    try:
        with pytest.raises(TerminalError):
            ctl.reconcile("lonely-1")
    finally:
        ctl.close()


def test_private_repo_is_fetched_with_the_installation_token(
    tmp_path: Path, app_config: Config, store, clock, fake, make_app, make_deployment
) -> None:
    """No RepoCredential: the source controller fetches a private repo with the App's token."""
    with PrivateGitServer(tmp_path / "remotes", INSTALL_TOKEN) as remote:
        fake.mint = lambda: INSTALL_TOKEN
        cfg = dataclasses.replace(app_config, git_url_template=remote.url_template)
        sha = push_commit(tmp_path, "acme/secret", {"forge.yaml": GOOD})
        make_deployment(make_app("secret"), 1, sha)
        source = SourceController(store, clock, cfg, fetch_attempts=1, fetch_deadline=0)
        source.reconcile("secret-1")
        source.close()
        dep = store.get(Deployment, "secret-1")
        assert condition_of(dep, "SourceReady").status == "True", dep.status.message
        assert 200 in remote.statuses() and 401 in remote.statuses()
        assert remote.argv_leaks == []
        assert INSTALL_TOKEN not in dep.model_dump_json()


def test_without_the_app_the_private_fetch_fails(
    tmp_path: Path, config: Config, store, clock, make_app, make_deployment
) -> None:
    """The same private repo without the App or a credential fails to fetch (the test above can fail)."""
    with PrivateGitServer(tmp_path / "remotes", INSTALL_TOKEN) as remote:
        cfg = dataclasses.replace(config, git_url_template=remote.url_template)
        sha = push_commit(tmp_path, "acme/secret", {"forge.yaml": GOOD})
        make_deployment(make_app("secret"), 1, sha)
        SourceController(store, clock, cfg, fetch_attempts=1, fetch_deadline=0).reconcile("secret-1")
        source = store.get(Deployment, "secret-1").status.condition("SourceReady")
        assert source is not None and (source.status, source.reason) == ("False", "FetchFailed")
