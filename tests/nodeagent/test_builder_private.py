"""The builder and a private repository: the token comes from the real API's gitcredential route
(node token), the remote is ``git http-backend`` behind Basic auth on loopback, and the token
never shows up in an argv, the build log or a FetchFailed message."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forge import errors
from forge.cgroups import detect_driver
from forge.client import ForgeClient
from forge.nodeagent.builder import REASON_FETCH_FAILED, Builder, BuildError, api_credentials
from forge.nodeagent.logwriter import read_all
from forge.nodeagent.sandbox import Sandbox, SandboxSpec, UidAllocator
from forge.nodeagent.spec import RunSpec
from tests.githttp import PrivateGitServer
from tests.nodeagent.test_agent_harness import CLOCK, NEEDS, Api, make_repo, manifest, remove_network

pytestmark = pytest.mark.skipif(not NEEDS, reason="needs root, git and bwrap")
TOKEN = "ghp_BuilderPrivateToken0123456789abcd"
WRONG = "ghp_BuilderWrongToken00000000000000000"
LIMITS = (256 * 1024 * 1024, 1.0, 256)


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        (tmp / "api").mkdir()
        self.api = Api(tmp / "api")
        self.commits = {repo: make_repo(tmp / "repos", repo) for repo in ("acme/private", "acme/wrong", "solo/open")}
        self.remote = PrivateGitServer(tmp / "repos", TOKEN)
        self.client = ForgeClient(self.api.url, self.api.node_token("n1"))
        self.api.node_token("n2")
        for name, scope, token in (("acme", "acme", TOKEN), ("acme-wrong", "acme/wrong", WRONG)):
            r = self.api.admin.post("/api/v1/repocredentials",
                                    json={"metadata": {"name": name}, "spec": {"scope": scope, "token": token}})
            assert r.status_code == 201, r.text
        self.driver = detect_driver(parent=f"forge-test-builder-{uuid.uuid4().hex[:8]}")
        uids = UidAllocator(tmp / "data" / "uids.json")
        self.builder = Builder(tmp / "data", self.remote.url_template, Sandbox(self.driver), self.driver, CLOCK,
                               SandboxSpec, lambda app: (uids.uid_for(app),) * 2,
                               credentials=api_credentials(self.client))

    def build(self, instance: str, repo: str, node: str = "n1") -> Path:
        app = instance.split("-", 1)[0]
        self.api.create_instance(instance, node, self.commits[repo], manifest(), app=app, repo=repo)
        run = RunSpec(build_commands=("cat app.py > copied.py",), build_timeout=60, command="true")
        return self.builder.ensure_built(instance, app, instance.rsplit("-", 1)[0], repo, self.commits[repo], run,
                                         {"PATH": "/usr/bin:/bin"}, LIMITS, self.build_log(instance))

    def build_log(self, instance: str) -> Path:
        return self.tmp / "logs" / instance / "build.log"

    def close(self) -> None:
        self.client.close()
        self.remote.close()
        self.api.close()
        self.driver.remove_parent()


@pytest.fixture
def rig() -> Iterator[Rig]:
    # Not under pytest's basetemp (see test_agent_e2e): the app uid must reach its release dir.
    tmp = Path(tempfile.mkdtemp(prefix="forge-builder-private-"))
    r = Rig(tmp)
    yield r
    r.close()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def argvs(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every argv this process hands to subprocess.run / Popen while the test runs."""
    seen: list[list[str]] = []
    real_run, real_popen = subprocess.run, subprocess.Popen

    def run(args: Any, *a: Any, **kw: Any) -> Any:
        seen.append([str(x) for x in args])
        return real_run(args, *a, **kw)

    class Popen(real_popen):  # type: ignore[misc,valid-type]
        def __init__(self, args: Any, *a: Any, **kw: Any) -> None:
            seen.append([str(x) for x in args])
            super().__init__(args, *a, **kw)

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(subprocess, "Popen", Popen)
    return seen


def _no_token_in(*texts: str) -> None:
    for text in texts:
        assert TOKEN not in text and WRONG not in text


def test_private_repo_builds_with_the_api_credential(rig: Rig, argvs: list[list[str]]) -> None:
    """The builder fetches with the token from /gitcredential and builds; no argv, log or file holds it."""
    release = rig.build("private-1-0", "acme/private")
    assert (release / "copied.py").read_text() == (release / "app.py").read_text()
    statuses = rig.remote.statuses()
    assert 401 in statuses and 200 in statuses, "the remote demanded and then accepted the token"
    assert rig.remote.argv_leaks == [], "a live process carried the token in its argv"
    fetches = [a for a in argvs if "fetch" in a]
    assert fetches and all(a[0] == "git" for a in fetches)
    _no_token_in(*(" ".join(a) for a in argvs), read_all(rig.build_log("private-1-0").parent, "build").decode())
    leftovers = [p for p in (rig.tmp / "data").rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert leftovers == [], "the token was written to disk"
    assert not list((rig.tmp / "data" / "git").glob(".askpass-*")), "the askpass dir is removed"
    # A second release of the cached commit needs no fetch, so it asks for no credential.
    before = len(statuses)
    rig.build("private-2-0", "acme/private")
    assert len(rig.remote.statuses()) == before


@pytest.mark.parametrize(("instance", "repo"), [("wrong-1-0", "acme/wrong"), ("open-1-0", "solo/open")],
                         ids=["wrong-token", "no-credential"])
def test_fetch_failure_names_no_token(rig: Rig, instance: str, repo: str) -> None:
    """A rejected or missing credential is FetchFailed; neither the message nor the build log holds a token."""
    with pytest.raises(BuildError) as exc:
        rig.build(instance, repo)
    assert exc.value.reason == REASON_FETCH_FAILED
    assert "Authentication failed" in exc.value.message or "could not read Username" in exc.value.message
    _no_token_in(exc.value.message, read_all(rig.build_log(instance).parent, "build").decode())
    assert rig.remote.argv_leaks == []


def test_another_nodes_instance_gets_no_credential(rig: Rig) -> None:
    """An Instance bound to another node: the API refuses the credential (403), and the build is
    retried later rather than failed (the error is not a BuildError)."""
    with pytest.raises(errors.Forbidden):
        rig.build("theirs-1-0", "acme/private", node="n2")
    assert rig.remote.statuses() == [], "git never ran"
    assert not rig.builder.marker(rig.builder.release_dir("theirs", "theirs-1")).exists()


def test_agent_wires_the_credential_route_into_its_builder(rig: Rig) -> None:
    """The agent's builder asks the API with the agent's own node token (no test-side wiring)."""
    from forge.nodeagent.agent import Agent

    rig.api.create_instance("wired-1-0", "n1", rig.commits["acme/private"], manifest(), app="wired", repo="acme/private")
    agent = Agent(ForgeClient(rig.api.url, rig.api.node_token("n1")), "n1", rig.tmp / "agent", "127.0.0.1", None, "dev",
                  rig.remote.url_template, threading.Event(), CLOCK, driver=rig.driver)
    try:
        creds = agent.reconciler.builder.credentials
        assert creds is not None and creds("wired-1-0") == TOKEN
        rig.api.create_instance("pub-1-0", "n1", rig.commits["solo/open"], manifest(), app="pub", repo="solo/open")
        assert creds("pub-1-0") is None, "404 means a public repo"
    finally:
        agent.client.close()
        remove_network(rig.tmp / "agent")
