"""The first hour: failures a newcomer provokes explain themselves, end to end (real forge up,
real git, real apps)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from tests.e2e.harness import Forge, Remote, free_port, push_payload

pytestmark = [pytest.mark.e2e]

WRONG_PORT_APP = """\
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"hi")


print("PORT is", os.environ["PORT"], "but I listen on {port}", flush=True)
ThreadingHTTPServer(("0.0.0.0", {port}), H).serve_forever()
"""

MANIFEST = """name: {name}
runtime: python3.11
run:
  command: exec python3 app.py
resources: {{memory: 128M, cpu: 0.5}}
health: {{path: /, interval: 3s, timeout: 1s, retries: 8}}
{extra}"""


def register(forge: Forge, name: str, repo: str) -> None:
    body = {
        "apiVersion": "forge/v1",
        "kind": "App",
        "metadata": {"name": name},
        "spec": {"repo": repo, "branches": ["main"]},
    }
    with forge.client as c:
        r = c.post("/api/v1/apps", json=body)
        assert r.status_code == 201, r.text


def push(forge: Forge, repo: str, commit: str) -> None:
    r = forge.webhook("push", push_payload(repo, "refs/heads/main", commit))
    assert r.status_code == 202, r.text


def test_app_on_the_wrong_port_fails_naming_both_ports(forge: Forge) -> None:
    """An app that listens on another port than $PORT fails with WrongPort, naming the port Forge
    gave it and the one it bound — long before its probes (8 × 3 s) would run out."""
    wrong = free_port()
    remote = Remote(forge.root, "acme/wrongport")
    register(forge, "wrongport", "acme/wrongport")
    sha = remote.commit(
        {
            "app.py": WRONG_PORT_APP.replace("{port}", str(wrong)),
            "forge.yaml": MANIFEST.format(name="wrongport", extra=""),
        },
        "wrong port",
    )
    t0 = time.monotonic()
    push(forge, "acme/wrongport", sha)
    dep = forge.wait_phase("wrongport-1", {"Failed", "Live"}, timeout=60)
    took = time.monotonic() - t0
    st = dep["status"]
    assert st["phase"] == "Failed" and st["reason"] == "WrongPort", st
    m = re.search(r"\$PORT=(\d+)", st["message"])
    assert m, st["message"]
    given = int(m.group(1))
    assert given != wrong
    assert f":{wrong}" in st["message"] and "not on $PORT" in st["message"], st["message"]
    insts = forge.list("instances", "forge.dev/deployment=wrongport-1")
    assert insts and all(i["status"]["reason"] == "WrongPort" for i in insts if i["status"].get("reason")), (
        insts
    )
    events = [e["spec"]["message"] for e in forge.list("events") if e["spec"]["reason"] == "WrongPort"]
    assert any(f"$PORT={given}" in e and str(wrong) in e for e in events), events
    print(f"wrong port reported {took:.1f}s after the push")


def test_build_out_of_time_names_build_timeout(forge: Forge) -> None:
    """A build past build.timeout fails the release naming the build, build.timeout and how to raise it."""
    remote = Remote(forge.root, "acme/slowbuild")
    register(forge, "slowbuild", "acme/slowbuild")
    manifest = MANIFEST.format(name="slowbuild", extra="").replace(
        "run:", 'build:\n  commands: ["echo compiling", "sleep 60"]\n  timeout: 2s\nrun:'
    )
    sha = remote.commit({"app.py": "print('never')\n", "forge.yaml": manifest}, "slow build")
    push(forge, "acme/slowbuild", sha)
    st = forge.wait_phase("slowbuild-1", {"Failed", "Live"}, timeout=60)["status"]
    assert st["phase"] == "Failed" and st["reason"] == "BuildFailed", st
    for words in ("'sleep 60'", "the build ran out of time", "build.timeout is 2s", "raise it in forge.yaml"):
        assert words in st["message"], st["message"]


def cli(forge: Forge, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**forge.env, "FORGE_URL": forge.api, "FORGE_DATA_DIR": "/nonexistent-forge-first-hour"}
    env.pop("DISPLAY", None)
    env.pop("BROWSER", None)
    return subprocess.run([sys.executable, "-m", "forge", *args], env=env, capture_output=True, text=True, timeout=180)


def test_restart_ps_open_status_overview_and_create(forge: Forge) -> None:
    """apps create says how to deploy without GitHub; forge restart restarts the live Instances in
    place (new pid, same release, no restart counted, no new Deployment); ps, open and a bare status
    show them."""
    r = cli(forge, "apps", "create", "again", "--repo", "acme/again")
    assert r.returncode == 0, r.stderr
    assert "forge deploy again --ref main --wait" in r.stdout and "webhook" in r.stdout, r.stdout
    remote = Remote(forge.root, "acme/again")
    with forge.client as c:
        app = c.get("/api/v1/apps/again").json()
        app["spec"]["replicas"] = 2
        c.put("/api/v1/apps/again", json={k: app[k] for k in ("apiVersion", "kind", "metadata", "spec")}).raise_for_status()
    push(forge, "acme/again", remote.app_release("again", "v1"))
    forge.wait_phase("again-1", {"Live"}, timeout=120)
    before = {i["metadata"]["name"]: i for i in forge.list("instances", "forge.dev/deployment=again-1")}
    assert len(before) == 2

    r = cli(forge, "restart", "again")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 Instance(s) of again-1 restarted" in r.stdout, r.stdout
    after = {i["metadata"]["name"]: i for i in forge.list("instances", "forge.dev/deployment=again-1")}
    assert set(after) == set(before)
    for name, inst in after.items():
        st, old = inst["status"], before[name]["status"]
        assert st["ready"] and st["pid"] != old["pid"] and st["restarts"] == old["restarts"], (st, old)
        assert st["port"] == old["port"]
    assert [d["metadata"]["name"] for d in forge.list("deployments", "forge.dev/app=again")] == ["again-1"]
    assert forge.get("deployments", "again-1")["status"]["phase"] == "Live"
    restarted = [e for e in forge.list("events") if e["spec"]["reason"] == "Restarted"
                 and e["spec"]["involvedObject"]["name"] in after]
    assert len(restarted) == 2 and all(e["spec"]["type"] == "Normal" for e in restarted), restarted
    assert not [e for e in forge.list("events") if e["spec"]["reason"] in ("CrashLoopBackOff", "Unhealthy")
                and "again" in e["spec"]["involvedObject"]["name"]]
    assert forge.serves("again.localhost", "v1")

    r = cli(forge, "ps", "again")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NAME", "TYPE", "STATE", "NODE", "ADDRESS", "RESTARTS", "AGE"]
    assert sorted(line.split()[0] for line in lines[1:]) == sorted(after)
    assert all(" web " in line and "Running" in line for line in lines[1:]), r.stdout

    r = cli(forge, "open", "again")
    assert r.returncode == 0 and r.stdout.strip() == forge.get("apps", "again")["status"]["url"], r

    r = cli(forge, "status")
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.startswith("again "))
    assert "again-1" in row and "2/2" in row, r.stdout
    r = cli(forge, "status", "-o", "json")
    assert {"name": "again", "live": "again-1"}.items() <= next(
        a for a in json.loads(r.stdout)["apps"] if a["name"] == "again").items()
