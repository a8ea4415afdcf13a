"""The forge CLI against a live ``forge server`` (gunicorn, real HTTP, real SQLite)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

TOKEN = "cli-test-token-abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("cli-server")
    url = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_")}
    env["FORGE_ADMIN_TOKEN"] = TOKEN
    log = (data / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "forge", "server", "--listen", url[7:], "--data-dir", str(data)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise AssertionError((data / "server.log").read_text())
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def forge(url: str, *args: str, token: str = TOKEN, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_")}
    env.update(FORGE_URL=url, FORGE_ADMIN_TOKEN=token, FORGE_DATA_DIR="/nonexistent-forge-cli-test")
    return subprocess.run([sys.executable, "-m", "forge", *args], env=env, capture_output=True, text=True,
                          input=stdin, timeout=60)


APPS_YAML = """apiVersion: forge/v1
kind: App
metadata: {name: hello}
spec: {repo: acme/hello, branches: [main]}
---
kind: App
metadata: {name: other, labels: {team: web}}
spec: {repo: acme/other}
"""


def test_version() -> None:
    """forge version prints the version and exits 0."""
    r = subprocess.run([sys.executable, "-m", "forge", "version"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("forge ")


def test_apply_get_delete_round_trip(server: str, tmp_path: Path) -> None:
    """apply creates several documents, a second apply updates them, get shows them, delete removes one."""
    f = tmp_path / "apps.yaml"
    f.write_text(APPS_YAML)
    r = forge(server, "apply", "-f", str(f))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["app/hello created", "app/other created"]
    f.write_text(APPS_YAML.replace("branches: [main]", "branches: [main, prod]"))
    r = forge(server, "apply", "-f", str(f))
    assert r.stdout.splitlines() == ["app/hello configured", "app/other configured"], r.stderr
    r = forge(server, "get", "apps", "hello", "-o", "json")
    assert json.loads(r.stdout)["spec"]["branches"] == ["main", "prod"]
    r = forge(server, "get", "apps")
    assert r.returncode == 0 and "NAME" in r.stdout and "acme/other" in r.stdout
    r = forge(server, "get", "app", "-l", "team=web", "-o", "yaml")
    assert "name: other" in r.stdout and "name: hello" not in r.stdout
    assert forge(server, "delete", "app", "other").returncode != 0, "an app is not deleted unasked"
    assert forge(server, "delete", "app", "other", "--yes").stdout.strip() == "app/other deleted"
    r = forge(server, "get", "apps", "other")
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


def test_apply_accepts_json_from_stdin(server: str) -> None:
    """apply -f - reads JSON (a list of records) from standard input."""
    body = json.dumps([{"kind": "App", "metadata": {"name": "fromjson"}, "spec": {"repo": "acme/json"}}])
    r = forge(server, "apply", "-f", "-", stdin=body)
    assert r.returncode == 0 and "app/fromjson created" in r.stdout, r.stderr


@pytest.mark.parametrize("args,needle", [
    (("get", "widgets"), "unknown kind 'widgets'"),
    (("get", "apps", "nope"), "error: "),
    (("delete", "app", "nope"), "error: "),
    (("apply", "-f", "/nonexistent/file.yaml"), "cannot read /nonexistent/file.yaml"),
], ids=["unknown-kind", "missing", "delete-missing", "missing-file"])
def test_failures_are_one_clear_line(server: str, args: tuple[str, ...], needle: str) -> None:
    """Failures print one clear line to stderr and exit non-zero, never a traceback."""
    r = forge(server, *args)
    assert r.returncode != 0
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2


def test_invalid_record_names_the_field(server: str, tmp_path: Path) -> None:
    """An invalid record is refused with a message naming the field."""
    f = tmp_path / "bad.yaml"
    f.write_text("kind: App\nmetadata: {name: bad}\nspec: {repo: acme/bad, replica: 3}\n")
    r = forge(server, "apply", "-f", str(f))
    assert r.returncode == 1 and "spec.replica" in r.stderr and "Traceback" not in r.stderr


def test_wrong_token_and_unreachable_server(server: str) -> None:
    """A wrong token and an unreachable API each fail with one line."""
    r = forge(server, "get", "apps", token="wrong")
    assert r.returncode == 1 and "error:" in r.stderr
    r = forge(f"http://127.0.0.1:{free_port()}", "get", "apps")
    assert r.returncode == 1 and "cannot reach the Forge API" in r.stderr and "Traceback" not in r.stderr


def test_events_lists_and_filters(server: str) -> None:
    """forge events prints Events (none yet is fine) and exits 0; -o json is a JSON list."""
    r = forge(server, "events", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert isinstance(json.loads(r.stdout), list)


def test_nodes_cordon_uncordon_drain(server: str) -> None:
    """cordon/uncordon flip the Node's spec; drain of an empty node ends at once; a pinned app exits 2."""
    c = httpx.Client(base_url=server, headers={"Authorization": f"Bearer {TOKEN}"})
    c.post("/api/v1/nodes", json={"metadata": {"name": "w1"}, "spec": {"address": "10.0.0.5"}}).raise_for_status()
    r = forge(server, "nodes", "cordon", "w1")
    assert r.returncode == 0 and "cordoned" in r.stdout
    assert c.get("/api/v1/nodes/w1").json()["spec"]["unschedulable"] is True
    r = forge(server, "nodes")
    assert r.returncode == 0 and "SchedulingDisabled" in r.stdout and "MEMORY(req/alloc)" in r.stdout
    r = forge(server, "nodes", "drain", "w1", "--timeout", "5")
    assert r.returncode == 0 and "drained: it runs no Instances" in r.stdout, r.stdout + r.stderr
    assert c.get("/api/v1/nodes/w1").json()["spec"]["drain"] is True
    r = forge(server, "nodes", "uncordon", "w1")
    spec = c.get("/api/v1/nodes/w1").json()["spec"]
    assert r.returncode == 0 and (spec["unschedulable"], spec["drain"]) == (False, False)
    app = c.post("/api/v1/apps", json={"metadata": {"name": "pinned"}, "spec": {"repo": "acme/pinned"}}).json()
    app["status"] = {"storageNode": "w1"}
    c.put("/api/v1/apps/pinned/status", json=app).raise_for_status()
    r = forge(server, "nodes", "drain", "w1", "--timeout", "5")
    assert r.returncode == 2 and "pinned" in r.stderr and "Traceback" not in r.stderr
    r = forge(server, "nodes", "cordon", "ghost")
    assert r.returncode == 1 and r.stderr.startswith("error: no node 'ghost'")


@pytest.mark.parametrize("verb", [("apps", "delete"), ("delete", "app")])
def test_apps_delete_without_a_terminal_needs_yes(server: str, verb: tuple[str, str]) -> None:
    """``forge apps delete NAME </dev/null`` (or ``forge delete app NAME``) deletes nothing and
    exits non-zero, saying what would be lost; with --yes it deletes, its secret env too."""
    r = forge(server, "apps", "create", "doomed", "--repo", "acme/doomed")
    assert r.returncode == 0, r.stderr
    r = forge(server, *verb, "doomed", stdin="y\n")
    assert r.returncode != 0 and "--yes" in r.stderr and "release" in r.stderr and "logs" in r.stderr, r
    assert forge(server, "get", "apps", "doomed").returncode == 0, "still there"
    r = forge(server, *verb, "doomed", "--yes")
    assert r.returncode == 0 and r.stdout.startswith("app/doomed deleted"), r.stderr
    assert forge(server, "get", "apps", "doomed").returncode == 1
