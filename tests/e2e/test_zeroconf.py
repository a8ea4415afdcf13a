"""Zero-config builds under a real ``forge up``: Flask (requirements.txt + Procfile with release:
and worker:), Django (pyproject.toml + uv.lock) and Express (package.json + package-lock.json)
go Live without a forge.yaml, with real packages from PyPI and npm; a second release of an
unchanged dependency set is served from the App's build cache; two lockfiles fail the push.

Needs root, caddy, node/npm, and the package registries (PyPI, npm) reachable from builds."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Forge, Remote, running_forge, wait_for
from tests.e2e.test_push_to_live import push, register

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("caddy") is None or shutil.which("npm") is None,
        reason="needs root, caddy and npm",
    ),
]

FIXTURES = Path(__file__).parent.parent / "fixtures" / "zeroconf"


def fixture_files(name: str) -> dict[str, str]:
    root = FIXTURES / name
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def forge() -> Iterator[Forge]:
    with running_forge("forge-e2e-zeroconf-") as f:
        yield f


def build_log(forge: Forge, app: str, deployment: str) -> list[str]:
    """The build output of one Deployment, as the API serves it (shipped from the node)."""

    def lines() -> list[str] | None:
        with forge.client as c:
            r = c.get(f"/api/v1/apps/{app}/logs", params={"deployment": deployment, "source": "build"})
        r.raise_for_status()
        out = [json.loads(ln)["line"] for ln in r.text.splitlines() if ln.strip()]
        return out if any("build succeeded" in ln for ln in out) else None

    return wait_for(lines, 30, f"{deployment}'s build log")


def deploy(forge: Forge, remote: Remote, app: str, files: dict[str, str], n: int, version: str) -> dict:
    commit = remote.commit({**files, "version.txt": version + "\n"}, version)
    assert push(forge, remote.full_name, commit) == [f"{app}-{n}"]
    dep = forge.wait_phase(f"{app}-{n}", {"Live", "Failed"}, timeout=300)
    status = dep["status"]
    assert status["phase"] == "Live", (status.get("reason"), status.get("message"))
    return dep


@pytest.mark.parametrize(
    ("fixture", "first_note", "body"),
    [
        ("flask", "detected Python: requirements.txt", "flask"),
        ("django", "detected Python: uv.lock with pyproject.toml", "django"),
        ("express", "detected Node: package-lock.json", "express"),
    ],
    ids=["flask-requirements-procfile", "django-uv-lock", "express-npm-ci"],
)
def test_repository_without_forge_yaml_goes_live(forge: Forge, fixture: str, first_note: str, body: str) -> None:
    """A Python or Node repository deploys with no forge.yaml; its build log starts with what
    was detected, and an unchanged dependency set is installed from the build cache next time."""
    app = f"zc-{fixture}"
    remote = Remote(forge.root, f"acme/{app}")
    register(forge, app, remote.full_name)
    files = fixture_files(fixture)
    assert "forge.yaml" not in files
    dep = deploy(forge, remote, app, files, 1, "v1")
    assert dep["status"]["manifest"]["build"]["detected"][0].startswith(first_note)
    wait_for(lambda: forge.serves(f"{app}.localhost", f"{body} v1"), 30, f"{app} v1 through Caddy")
    first = build_log(forge, app, f"{app}-1")
    assert first[0] == "==> " + dep["status"]["manifest"]["build"]["detected"][0], first[:3]
    assert any("build cache miss" in ln for ln in first), first

    deploy(forge, remote, app, files, 2, "v2")  # same dependency files: a cache hit
    wait_for(lambda: forge.serves(f"{app}.localhost", f"{body} v2"), 30, f"{app} v2 through Caddy")
    second = build_log(forge, app, f"{app}-2")
    assert any("build cache hit" in ln for ln in second), second
    if fixture == "flask":
        instances = forge.list("instances", f"forge.dev/app={app}")
        kinds = {(i["metadata"]["labels"].get("forge.dev/process"), i["status"].get("phase")) for i in instances}
        assert ("worker", "Running") in kinds, kinds
        assert any(k == "release" for k, _ in kinds), kinds


def test_conflicting_lockfiles_fail_the_push(forge: Forge) -> None:
    """package-lock.json beside yarn.lock: the Deployment fails, naming both files."""
    remote = Remote(forge.root, "acme/zc-conflict")
    register(forge, "zc-conflict", remote.full_name)
    files = {**fixture_files("express"), "yarn.lock": "# yarn lockfile v1\n"}
    commit = remote.commit(files, "two lockfiles")
    push(forge, remote.full_name, commit)
    dep = forge.wait_phase("zc-conflict-1", {"Live", "Failed"}, timeout=60)
    status = dep["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "DetectionFailed"), status
    assert "package-lock.json" in status["message"] and "yarn.lock" in status["message"]
