"""Private repositories for the source controller: a real git remote over HTTP on loopback that
demands the token (``git http-backend`` behind Basic auth), fetched with and without it."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forge.config import Config
from forge.controllers.rollout import RolloutController
from forge.controllers.source import SourceController
from forge.gitsource import GitError, GitSource
from forge.models import ObjectMeta, RepoCredential, RepoCredentialSpec
from forge.secrets import Keyring
from tests.controllers.conftest import condition_of
from tests.controllers.test_source import GOOD, push_commit
from tests.githttp import PrivateGitServer

TOKEN = "ghp_PrivateRepoToken0123456789abcdef"
WRONG = "ghp_WrongTokenWrongTokenWrongToken00"


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[PrivateGitServer]:
    with PrivateGitServer(tmp_path / "remotes", TOKEN) as srv:
        yield srv


@pytest.fixture
def argvs(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every argv this process hands to subprocess.run while the test runs."""
    seen: list[list[str]] = []
    real = subprocess.run

    def spy(args: Any, *a: Any, **kw: Any) -> Any:
        seen.append([str(x) for x in args])
        return real(args, *a, **kw)

    monkeypatch.setattr(subprocess, "run", spy)
    return seen


@pytest.mark.parametrize(("token", "ok"), [(TOKEN, True), (None, False), (WRONG, False)],
                         ids=["with-token", "no-token", "wrong-token"])
def test_gitsource_fetch_needs_the_token(tmp_path: Path, remote: PrivateGitServer, argvs: list[list[str]],
                                         token: str | None, ok: bool) -> None:
    """Only the right token fetches; failures are FetchFailed and no message or argv holds a token."""
    sha = push_commit(tmp_path, "acme/secret", {"forge.yaml": GOOD})
    git = GitSource(tmp_path / "cache")
    url = remote.url_template.format(full_name="acme/secret")
    if ok:
        cache = git.fetch("acme/secret", url, sha, token)
        assert git.show(cache, sha, "forge.yaml") == GOOD.encode()
        assert 200 in remote.statuses()
    else:
        with pytest.raises(GitError) as exc:
            git.fetch("acme/secret", url, sha, token)
        assert exc.value.reason == "FetchFailed"
        assert TOKEN not in exc.value.message and WRONG not in exc.value.message
        assert "Authentication failed" in exc.value.message or "could not read Username" in exc.value.message
        assert set(remote.statuses()) == {401}
    assert 401 in remote.statuses(), "the remote really demanded credentials"
    assert remote.argv_leaks == [], "a live process carried the token in its argv"
    fetches = [a for a in argvs if "fetch" in a]
    assert fetches and not [a for a in argvs if TOKEN in " ".join(a) or WRONG in " ".join(a)]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["acme"], "askpass dirs are removed"


def _credential(store: Any, config: Config, name: str, scope: str, token: str) -> None:
    sealed = Keyring.load(config).encrypt(token, aad=f"RepoCredential/{name}/token")
    store.create(RepoCredential(metadata=ObjectMeta(name=name), spec=RepoCredentialSpec(scope=scope, token=sealed)))


@pytest.mark.parametrize(
    ("creds", "phase"),
    [
        ([("acme", "acme", TOKEN)], "Pending"),
        ([("acme", "acme", WRONG), ("acme-secret", "acme/secret", TOKEN)], "Pending"),
        ([("acme", "acme", TOKEN), ("acme-secret", "acme/secret", WRONG)], "Failed"),
        ([("acme-other", "acme/other", TOKEN)], "Failed"),
    ],
    ids=["owner-scope", "repo-overrides-owner", "repo-wins-even-when-wrong", "other-repo-does-not-apply"],
)
def test_source_controller_private_repo(tmp_path: Path, store: Any, clock: Any, config: Config, remote: PrivateGitServer,
                                        make_app: Any, make_deployment: Any, caplog: pytest.LogCaptureFixture,
                                        creds: list[tuple[str, str, str]], phase: str) -> None:
    """The most specific RepoCredential is used for the fetch; a failure names no token anywhere."""
    config = dataclasses.replace(config, git_url_template=remote.url_template)
    for name, scope, token in creds:
        _credential(store, config, name, scope, token)
    sha = push_commit(tmp_path, "acme/secret", {"forge.yaml": GOOD})
    make_deployment(make_app("secret"), 1, sha)
    source = SourceController(store, clock, config, fetch_attempts=1, fetch_deadline=0)
    with caplog.at_level(logging.DEBUG):
        source.reconcile("secret-1")
    RolloutController(store, clock, config).reconcile("secret")  # the phase's one writer
    dep = store.get("Deployment", "secret-1")
    if phase == "Pending":
        assert dep.status.phase != "Failed", dep.status.message
        assert condition_of(dep, "SourceReady").status == "True"
    else:
        assert dep.status.phase == phase, dep.status.message
        assert dep.status.reason == "FetchFailed"
    everything = [e.model_dump_json() for e in store.list("Event")[0]] + [dep.model_dump_json()]
    everything += [r.getMessage() for r in caplog.records]
    assert not [t for t in everything if TOKEN in t or WRONG in t]
    assert remote.argv_leaks == []
