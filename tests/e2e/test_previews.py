"""Pull-request previews end to end: a real ``forge up`` fed GitHub's published pull_request
payloads serves ``APP-pr-N.localhost`` from ``refs/pull/N/head``, follows pushes, deletes the
preview within 60 s of the close, and builds a fork's PR only once approved — reporting all of
it to a fake GitHub that validates every request by GitHub's OpenAPI description."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from forge.clock import SystemClock, iso
from tests.e2e.harness import ADMIN_TOKEN, APP_PY, MANIFEST, Forge, Remote, git, running_forge, wait_for
from tests.github.fakegithub import FakeGithub
from tests.github.openapi import needs_octokit, webhook_example

pytestmark = [pytest.mark.e2e, needs_octokit]

TOKEN = "ghp_e2epreviews" + "y" * 26
# The seed's test app, answering with its version, FORGE_PREVIEW, FORGE_PR_NUMBER and GREETING.
PREVIEW_APP_PY = APP_PY.replace(
    "f\"{VERSION} {os.environ.get('GREETING', '')}\"",
    "f\"{VERSION} preview={os.environ.get('FORGE_PREVIEW', '-')} pr={os.environ.get('FORGE_PR_NUMBER', '-')} "
    "{os.environ.get('GREETING', '')}\"",
)


@pytest.fixture(scope="module")
def github() -> Iterator[FakeGithub]:
    gh = FakeGithub(clock=SystemClock(), tokens={TOKEN}).start()
    yield gh
    gh.stop()


@pytest.fixture(scope="module")
def forge(github: FakeGithub) -> Iterator[Forge]:
    if shutil.which("caddy") is None:
        pytest.skip("caddy is not installed (make setup)")
    with running_forge(
        "forge-e2e-pr-", FORGE_MODE="dev", FORGE_GITHUB_API_URL=github.url, FORGE_GITHUB_TOKEN=TOKEN
    ) as f:
        yield f


def pr_commit(remote: Remote, number: int, version: str) -> str:
    """A commit that exists on the remote only as ``refs/pull/N/head`` (as a fork's does on GitHub)."""
    files = {
        "app.py": PREVIEW_APP_PY,
        "version.txt": version + "\n",
        "forge.yaml": MANIFEST.format(name="hello", version=version, extra="", min_ready="1s"),
    }
    for rel, text in files.items():
        (remote.work / rel).write_text(text)
    git("-C", str(remote.work), "add", "-A")
    git(
        "-C",
        str(remote.work),
        "-c",
        "user.name=E2E",
        "-c",
        "user.email=e2e@example.com",
        "commit",
        "-q",
        "-m",
        version,
    )
    git("-C", str(remote.work), "push", "-q", "-f", "origin", f"HEAD:refs/pull/{number}/head")
    return git("-C", str(remote.work), "rev-parse", "HEAD").strip()


def pr_event(
    action: str, number: int, sha: str, head_repo: str = "acme/hello", association: str = "OWNER"
) -> dict:
    p = webhook_example("pull_request", action)
    p["number"] = p["pull_request"]["number"] = number
    p["repository"]["full_name"] = "acme/hello"
    pr = p["pull_request"]
    pr["base"]["ref"], pr["head"]["sha"], pr["head"]["repo"]["full_name"] = "main", sha, head_repo
    pr["author_association"], pr["draft"] = association, False
    pr["updated_at"] = iso(time.time() - 1)
    return p


def deliver(forge: Forge, event: str, payload: dict) -> dict:
    r = forge.webhook(event, payload)
    assert r.status_code == 202, r.text
    return r.json()


def gone(forge: Forge, plural: str, name: str) -> bool:
    try:
        forge.get(plural, name)
    except httpx.HTTPStatusError as exc:
        return exc.response.status_code == 404
    return False


def test_pr_opened_pushed_closed_and_a_fork_approved(forge: Forge, github: FakeGithub) -> None:
    remote = Remote(forge.root, "acme/hello")
    remote.app_release("hello", "main-v1")
    with forge.client as c:
        body = {
            "metadata": {"name": "hello"},
            "spec": {
                "repo": "acme/hello",
                "branches": ["main"],
                "previews": {"enabled": True, "env": {"GREETING": "hi-preview"}},
            },
        }
        assert c.post("/api/v1/apps", json=body).status_code == 201

    sha1 = pr_commit(remote, 7, "pr7-v1")
    assert deliver(forge, "pull_request", pr_event("opened", 7, sha1))["previews"] == ["hello-pr-7"]
    wait_for(
        lambda: forge.serves("hello-pr-7.localhost", "pr7-v1 preview=1 pr=7 hi-preview"),
        120,
        "the preview to serve",
    )
    dep1 = forge.get("previews", "hello-pr-7")["status"]["deployment"]
    assert forge.get("deployments", dep1)["spec"]["ref"] == "refs/pull/7/head"
    wait_for(lambda: github.states_of(dep1) == ["in_progress", "success"], 60, "the preview's report")
    gh = github.deployment_of(dep1)
    assert (
        gh["environment"] == "hello-pr-7" and gh["transient_environment"] and not gh["production_environment"]
    )

    sha2 = pr_commit(remote, 7, "pr7-v2")
    deliver(forge, "pull_request", pr_event("synchronize", 7, sha2))
    wait_for(lambda: forge.serves("hello-pr-7.localhost", "pr7-v2"), 120, "the pushed preview to serve")

    deliver(forge, "pull_request", pr_event("closed", 7, sha2))
    closed = time.monotonic()
    wait_for(
        lambda: gone(forge, "apps", "hello-pr-7") and not forge.list("instances", "forge.dev/app=hello-pr-7"),
        60,
        "the preview App and its processes to go",
    )
    assert forge.through_caddy("hello-pr-7.localhost").status_code == 404
    print(f"preview deleted {time.monotonic() - closed:.1f}s after the close")
    wait_for(lambda: github.states_of(dep1)[-1:] == ["inactive"], 60, "the environment to be inactive")
    wait_for(lambda: gone(forge, "previews", "hello-pr-7"), 60, "the Preview record to go")

    # a fork's PR: nothing builds, the commit says it waits; the CLI approves; then it serves
    sha3 = pr_commit(remote, 8, "pr8-fork")
    deliver(
        forge,
        "pull_request",
        pr_event("opened", 8, sha3, head_repo="forker/hello", association="CONTRIBUTOR"),
    )
    wait_for(
        lambda: forge.get("previews", "hello-pr-8")["status"].get("phase") == "AwaitingApproval",
        30,
        "waiting",
    )
    wait_for(lambda: github.commit_states(sha3, "forge/hello-pr-8") == ["pending"], 30, "the waiting status")
    assert gone(forge, "apps", "hello-pr-8")
    out = subprocess.run(
        [sys.executable, "-m", "forge", "previews", "approve", "hello", "8"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "FORGE_URL": forge.api, "FORGE_ADMIN_TOKEN": ADMIN_TOKEN},
    )
    assert out.returncode == 0 and sha3[:12] in out.stdout, out.stderr
    wait_for(
        lambda: forge.serves("hello-pr-8.localhost", "pr8-fork preview=1 pr=8"), 120, "the fork's preview"
    )
    listing = subprocess.run(
        [sys.executable, "-m", "forge", "previews", "hello"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "FORGE_URL": forge.api, "FORGE_ADMIN_TOKEN": ADMIN_TOKEN},
    )
    assert "#8" in listing.stdout and "approved" in listing.stdout, listing.stdout
    assert github.violations == []
