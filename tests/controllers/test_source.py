"""Source controller over real git repositories served through a file:// URL template."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from forge.config import Config
from forge.controllers import deploystate as ds
from forge.controllers.rollout import RolloutController
from forge.controllers.source import SourceController
from forge.gitauth import select_credential
from forge.gitsource import GitError
from forge.models import ObjectMeta, RepoCredential, RepoCredentialSpec
from forge.secrets import Keyring
from tests.controllers.conftest import condition_of, events_for, snapshot

GOOD = """\
runtime: python3.11
build:
  commands: ["true"]
run:
  command: python3 -m http.server $PORT
resources: {memory: 128M, cpu: 0.25}
health: {path: /health, interval: 5s, timeout: 1s, retries: 2}
"""
BAD_MEMORY = GOOD.replace("memory: 128M", "memory: lots")
UNKNOWN_FIELD = GOOD + "colour: blue\n"


def git(cwd: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x", "HOME": str(cwd), "PATH": "/usr/bin:/bin"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def push_commit(tmp_path: Path, repo: str, files: dict[str, str]) -> str:
    """Commit ``files`` to a work tree and push it to ``tmp_path/remotes/REPO.git``; return the sha."""
    remote = tmp_path / "remotes" / f"{repo}.git"
    work = tmp_path / "work" / repo
    if not remote.exists():
        remote.mkdir(parents=True)
        git(remote, "init", "--bare", "-q", "-b", "main")
        work.mkdir(parents=True)
        git(work, "init", "-q", "-b", "main")
        git(work, "remote", "add", "origin", str(remote))
    for name, text in files.items():
        (work / name).write_text(text)
    git(work, "add", "-A")
    git(work, "commit", "-q", "--allow-empty", "-m", "change")
    git(work, "push", "-q", "origin", "main")
    return git(work, "rev-parse", "HEAD")


@pytest.fixture
def source(store, clock, config) -> SourceController:
    return SourceController(store, clock, config, fetch_attempts=2, fetch_deadline=30)


def end(source: SourceController, app: str) -> None:
    """The rollout controller's turn: it alone writes phase, ending the release on source's verdict."""
    RolloutController(source.store, source.clock, source.config).reconcile(app)


def test_valid_manifest_is_stored(tmp_path, store, source, make_app, make_deployment) -> None:
    """A valid forge.yaml ends up normalised in status.manifest with SourceReady True."""
    sha = push_commit(tmp_path, "acme/hello", {"forge.yaml": GOOD})
    app = make_app("hello")
    make_deployment(app, 1, sha)
    source.reconcile("hello-1")
    dep = store.get("Deployment", "hello-1")
    assert ds.verdict(dep) is None
    assert dep.status.manifest.resources.memory == 128 * 1024 * 1024
    assert dep.status.manifest.run.command == "python3 -m http.server $PORT"
    assert condition_of(dep, "SourceReady").status == "True"
    before = snapshot(store)
    source.reconcile("hello-1")
    assert snapshot(store) == before


def test_second_commit_fetched_into_same_cache(tmp_path, store, source, make_app, make_deployment) -> None:
    """Two releases of one repository share the bare cache; each reads its own forge.yaml."""
    first = push_commit(tmp_path, "acme/hello", {"forge.yaml": GOOD})
    second = push_commit(tmp_path, "acme/hello", {"forge.yaml": GOOD.replace("128M", "64M")})
    app = make_app("hello")
    make_deployment(app, 1, first)
    make_deployment(app, 2, second)
    source.reconcile("hello-2")
    source.reconcile("hello-1")
    assert store.get("Deployment", "hello-1").status.manifest.resources.memory == 128 * 1024**2
    assert store.get("Deployment", "hello-2").status.manifest.resources.memory == 64 * 1024**2


@pytest.mark.parametrize(
    ("files", "reason", "needle"),
    [
        ({"forge.yaml": BAD_MEMORY}, "InvalidManifest", "forge.yaml: resources.memory"),
        ({"forge.yaml": UNKNOWN_FIELD}, "InvalidManifest", "colour"),
        ({"README": "no manifest"}, "DetectionFailed", "no forge.yaml and no dependency file"),
        (
            {"requirements.txt": "flask\n", "Pipfile.lock": "{}", "Procfile": "web: x"},
            "DetectionFailed",
            "requirements.txt and Pipfile.lock",
        ),
        (
            {"package.json": "{}", "package-lock.json": "{}", "yarn.lock": "", "Procfile": "web: x"},
            "DetectionFailed",
            "package-lock.json and yarn.lock",
        ),
    ],
    ids=["bad-memory", "unknown-field", "nothing-to-detect", "two-python-files", "two-lockfiles"],
)
def test_invalid_manifest_fails_deployment(
    tmp_path, store, source, make_app, make_deployment, files, reason, needle
) -> None:
    """An invalid or missing forge.yaml fails the Deployment, naming the field, with one Warning."""
    sha = push_commit(tmp_path, "acme/hello", files)
    make_deployment(make_app("hello"), 1, sha)
    source.reconcile("hello-1")
    end(source, "hello")
    dep = store.get("Deployment", "hello-1")
    assert (dep.status.phase, dep.status.reason) == ("Failed", reason)
    assert needle in dep.status.message
    assert dep.status.finished_time
    assert condition_of(dep, "SourceReady").status == "False"
    warnings = events_for(store, "hello-1", reason)
    assert len(warnings) == 1 and warnings[0].spec.type == "Warning" and needle in warnings[0].spec.message
    before = snapshot(store)
    source.reconcile("hello-1")
    assert snapshot(store) == before


def test_missing_commit_fails_fetch(tmp_path, store, source, make_app, make_deployment) -> None:
    """A commit the remote does not have fails the Deployment with FetchFailed at once."""
    push_commit(tmp_path, "acme/hello", {"forge.yaml": GOOD})
    make_deployment(make_app("hello"), 1, "0123456789abcdef0123456789abcdef01234567")
    source.reconcile("hello-1")
    end(source, "hello")
    dep = store.get("Deployment", "hello-1")
    assert (dep.status.phase, dep.status.reason) == ("Failed", "FetchFailed")
    assert "not found" in dep.status.message
    assert events_for(store, "hello-1", "FetchFailed")


def test_unreachable_remote_retries_then_fails(store, clock, source, make_app, make_deployment) -> None:
    """An unreachable remote is retried (reconcile raises) for N attempts and the deadline, then
    the Deployment fails with FetchFailed."""
    make_deployment(make_app("ghost"), 1)
    for _ in range(3):
        with pytest.raises(GitError):
            source.reconcile("ghost-1")
        clock.advance(10)
    dep = store.get("Deployment", "ghost-1")
    assert ds.verdict(dep) is None
    assert condition_of(dep, "SourceReady").reason == "FetchRetrying"
    assert not events_for(store, "ghost-1", "FetchFailed")
    clock.advance(10)
    source.reconcile("ghost-1")
    end(source, "ghost")
    dep = store.get("Deployment", "ghost-1")
    assert (dep.status.phase, dep.status.reason) == ("Failed", "FetchFailed")


def test_retries_while_remote_down_write_no_status(store, clock, source, make_app, make_deployment) -> None:
    """Found by the simulator (tests/sim regression source-spins-while-github-down, seed 1): each
    retry flipped SourceReady back to Fetching and then to FetchRetrying, two writes per attempt,
    and each write's watch event woke the key again past its back-off. The retries after the
    first must write nothing (the condition already says FetchRetrying with the same message)."""
    make_deployment(make_app("ghost"), 1)
    with pytest.raises(GitError):
        source.reconcile("ghost-1")
    version = store.get("Deployment", "ghost-1").metadata.resource_version
    for _ in range(3):
        clock.advance(5)
        with pytest.raises(GitError):
            source.reconcile("ghost-1")
        dep = store.get("Deployment", "ghost-1")
        assert dep.metadata.resource_version == version, "a retry wrote the Deployment's status"
        assert condition_of(dep, "SourceReady").reason == "FetchRetrying"


def test_credential_token_never_leaks(tmp_path, store, source, config: Config, make_app, make_deployment,
                                      caplog) -> None:
    """With a RepoCredential the token reaches no Event, status or log line (even on failure)."""
    token = "ghp_SuperSecretTokenValue1234567890"
    sealed = Keyring.load(config).encrypt(token, aad="RepoCredential/acme-hello/token")
    store.create(RepoCredential(metadata=ObjectMeta(name="acme-hello"),
                                spec=RepoCredentialSpec(scope="acme/hello", token=sealed)))
    sha = push_commit(tmp_path, "acme/hello", {"forge.yaml": BAD_MEMORY})
    app = make_app("hello")
    make_deployment(app, 1, sha)
    make_deployment(app, 2, "f" * 40)
    with caplog.at_level(logging.DEBUG):
        source.reconcile("hello-1")
        source.reconcile("hello-2")
    assert condition_of(store.get("Deployment", "hello-1"), "SourceReady").reason == "InvalidManifest"
    assert condition_of(store.get("Deployment", "hello-2"), "SourceReady").reason == "FetchFailed"
    everything = [e.model_dump_json() for e in store.list("Event")[0]]
    everything += [d.model_dump_json() for d in store.list("Deployment")[0]]
    everything += [r.getMessage() for r in caplog.records]
    assert not [t for t in everything if token in t]
    assert not list((tmp_path / "data" / "source-cache").rglob("*SuperSecret*"))


@pytest.mark.parametrize(
    ("scopes", "repo", "want"),
    [
        (["acme", "acme/hello"], "acme/hello", "acme/hello"),
        (["acme/hello", "acme"], "acme/other", "acme"),
        (["other"], "acme/hello", None),
        (["Acme"], "acme/hello", "Acme"),
    ],
    ids=["repo-wins", "owner-fallback", "none", "case-insensitive"],
)
def test_select_credential(scopes, repo, want) -> None:
    """The owner/repo scope beats the owner scope."""
    creds = [RepoCredential(metadata=ObjectMeta(name=f"c{i}"), spec=RepoCredentialSpec(scope=s))
             for i, s in enumerate(scopes)]
    got = select_credential(creds, repo)
    assert (got.spec.scope if got else None) == want


@pytest.mark.parametrize(("trigger", "ref", "stale"), [
    ("webhook", "refs/heads/main", True),
    ("webhook", "refs/heads/gone", True),
    ("api", "refs/heads/main", False),
    ("rollback", "refs/heads/main", False),
], ids=["replayed-push", "branch-deleted", "person-deploys-old-commit", "rollback"])
def test_stale_push_is_never_deployed(tmp_path, store, source, make_app, make_deployment,
                                      trigger: str, ref: str, stale: bool) -> None:
    """A push of a commit its branch no longer points at (a replayed delivery, a newer push) ends
    Cancelled/StalePush with a Warning Event and no manifest; what a person asks for is exempt."""
    from forge.models import Trigger

    old = push_commit(tmp_path, "acme/hello", {"forge.yaml": GOOD})
    push_commit(tmp_path, "acme/hello", {"forge.yaml": GOOD.replace("128M", "64M")})
    app = make_app("hello")
    dep = make_deployment(app, 1, old)
    dep.spec.trigger, dep.spec.ref = Trigger(type=trigger, delivery_id="d-1" if trigger == "webhook" else None), ref
    store.update(dep)
    source.reconcile("hello-1")
    end(source, "hello")
    got = store.get("Deployment", "hello-1")
    if stale:
        assert (got.status.phase, got.status.reason) == ("Cancelled", "StalePush"), got.status
        assert got.status.manifest is None and old[:12] in got.status.message
        [ev] = events_for(store, "hello-1", "StalePush")
        assert ev.spec.type == "Warning"
    else:
        assert got.status.manifest is not None and ds.verdict(got) is None


def test_push_of_the_current_head_deploys(tmp_path, store, source, make_app, make_deployment) -> None:
    """The usual case: the pushed commit is still its branch's head, so it deploys."""
    from forge.models import Trigger

    head = push_commit(tmp_path, "acme/hello", {"forge.yaml": GOOD})
    dep = make_deployment(make_app("hello"), 1, head)
    dep.spec.trigger, dep.spec.ref = Trigger(type="webhook", delivery_id="d-2"), "refs/heads/main"
    store.update(dep)
    source.reconcile("hello-1")
    assert store.get("Deployment", "hello-1").status.manifest is not None


def test_push_ahead_of_a_lagging_remote_is_not_stale(tmp_path, store, source, make_app, make_deployment) -> None:
    """Ordered by history: when the branch's head on the remote is an ancestor of the pushed commit
    (the remote has not caught up with the push yet), the push deploys."""
    from forge.models import Trigger

    push_commit(tmp_path, "acme/hello", {"forge.yaml": GOOD})
    work = tmp_path / "work" / "acme/hello"
    (work / "extra.txt").write_text("newer\n")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "newer")
    git(work, "push", "-q", "origin", "HEAD:refs/heads/incoming")  # the remote has it; main lags
    newer = git(work, "rev-parse", "HEAD")
    dep = make_deployment(make_app("hello"), 1, newer)
    dep.spec.trigger, dep.spec.ref = Trigger(type="webhook", delivery_id="d-3"), "refs/heads/main"
    store.update(dep)
    source.reconcile("hello-1")
    got = store.get("Deployment", "hello-1")
    assert got.status.manifest is not None and got.status.reason != "StalePush", got.status


def test_a_git_failure_reading_forge_yaml_is_not_file_not_found(tmp_path) -> None:
    """``show`` answers None only when the commit has no such file; a git error (here: the commit
    is not in the cache) is a transient GitError, never read as "forge.yaml not found"."""
    from forge.gitsource import GitError, GitSource

    sha = push_commit(tmp_path, "acme/hello", {"forge.yaml": GOOD})
    src = GitSource(tmp_path / "cache")
    cache = src.fetch("acme/hello", f"file://{tmp_path}/remotes/acme/hello.git", sha)
    assert src.show(cache, sha, "forge.yaml") is not None
    assert src.show(cache, sha, "missing.yaml") is None
    with pytest.raises(GitError) as err:
        src.show(cache, "f" * 40, "forge.yaml")
    assert err.value.transient


def test_detected_build_is_stored_without_forge_yaml(tmp_path, store, source, make_app, make_deployment) -> None:
    """No forge.yaml: requirements.txt + Procfile become the stored manifest, with the notes."""
    files = {
        "requirements.txt": "flask\ngunicorn\n",
        "app.py": "app = None\n",
        "Procfile": "web: gunicorn app:app\nrelease: flask db upgrade\nworker: python worker.py\n",
    }
    sha = push_commit(tmp_path, "acme/hello", files)
    make_deployment(make_app("hello"), 1, sha)
    source.reconcile("hello-1")
    dep = store.get("Deployment", "hello-1")
    m = dep.status.manifest
    assert condition_of(dep, "SourceReady").status == "True"
    assert m.run.command.endswith("gunicorn app:app")
    assert m.release.command.endswith("flask db upgrade")
    assert m.processes["worker"].command.endswith("python worker.py")
    assert "requirements.txt" in m.build.commands[0]
    assert m.build.detected[0].startswith("detected Python: requirements.txt")
    assert "build detected" in condition_of(dep, "SourceReady").message


def test_forge_yaml_fields_win_over_detection(tmp_path, store, source, make_app, make_deployment) -> None:
    """forge.yaml without build: detection fills the build, forge.yaml's run and resources win."""
    files = {
        "forge.yaml": "run:\n  command: python serve.py\nresources:\n  memory: 64M\n",
        "package.json": '{"scripts": {"start": "node server.js"}}',
        "package-lock.json": "{}",
        "Procfile": "web: node other.js\nclock: node clock.js\n",
    }
    sha = push_commit(tmp_path, "acme/hello", files)
    make_deployment(make_app("hello"), 1, sha)
    source.reconcile("hello-1")
    m = store.get("Deployment", "hello-1").status.manifest
    assert m.run.command == "python serve.py"
    assert m.resources.memory == 64 * 1024**2
    assert "npm ci" in m.build.commands[0]
    assert m.processes["clock"].command.endswith("node clock.js")


def test_forge_yaml_with_build_is_not_detected(tmp_path, store, source, make_app, make_deployment) -> None:
    """A forge.yaml that says how to build is taken as written, even beside conflicting lockfiles."""
    files = {"forge.yaml": GOOD, "package-lock.json": "{}", "yarn.lock": "", "package.json": "{}"}
    sha = push_commit(tmp_path, "acme/hello", files)
    make_deployment(make_app("hello"), 1, sha)
    source.reconcile("hello-1")
    m = store.get("Deployment", "hello-1").status.manifest
    assert m.build.detected == [] and condition_of(store.get("Deployment", "hello-1"), "SourceReady").status == "True"
