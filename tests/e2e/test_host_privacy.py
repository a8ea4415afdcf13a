"""Private by default (issue 19): another local user, or another app's uid, reads nothing of an
install and cannot dial its apps past Caddy.

Two apps run (``alpha`` with persistent storage, ``beta``); root lists every path under the data
dir, and a walker running as ``nobody`` and as alpha's uid (``setpriv``) tries to read each file
and list each directory. ``nobody`` reaches nothing; alpha's uid reaches its own release tree,
storage and build cache only. Then ``nobody`` dials alpha's instance address and service address (refused)
while root, as Caddy and the agent's probes do, still gets through.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Forge, Remote, push_payload, running_forge, wait_for

pytestmark = [pytest.mark.timeout(600)]

NOBODY = 65534
WALKER = r"""
import json, os, sys
paths = json.load(sys.stdin)
read = []
for p in paths:
    try:
        if os.path.isdir(p) and not os.path.islink(p):
            os.listdir(p)
        else:
            with open(p, "rb") as f:
                f.read(1)
        read.append(p)
    except OSError:
        pass
print(json.dumps(read))
"""
DIAL = r"""
import socket, sys
out = []
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        out.append("open")
    except OSError as exc:
        out.append(type(exc).__name__)
print(" ".join(out))
"""


def as_uid(uid: int, argv: list[str], stdin: str = "") -> str:
    """Run ``argv`` as ``uid`` (its own gid, no supplementary groups) from a neutral directory."""
    done = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *argv],
                          input=stdin, capture_output=True, text=True, timeout=120, cwd="/", check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def every_path(root: Path) -> list[str]:
    out = [str(root)]
    for top, dirs, files in os.walk(root):
        out += [os.path.join(top, n) for n in dirs + files]
    return out


@pytest.fixture(scope="module")
def forge() -> Iterator[Forge]:
    if shutil.which("caddy") is None or shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root, caddy and setpriv")
    with running_forge("forge-e2e-private-", FORGE_MODE="dev") as f:
        for name, extra in (("alpha", "storage: {size: 32M}\n"), ("beta", "")):
            remote = Remote(f.root, f"acme/{name}")
            sha = remote.app_release(name, "v1", extra=extra)
            with f.client as c:
                c.post("/api/v1/apps", json={"metadata": {"name": name},
                                             "spec": {"repo": f"acme/{name}", "branches": ["main"]}}).raise_for_status()
            f.webhook("push", push_payload(f"acme/{name}", "refs/heads/main", sha)).raise_for_status()
        for name in ("alpha", "beta"):
            f.wait_phase(f"{name}-1", {"Live"}, 180)
        yield f


def test_no_other_uid_reads_the_data_dir_beyond_its_own_app(forge: Forge) -> None:
    node = forge.data / "node"
    raw = json.loads((node / "uids.json").read_text())
    uids = raw.get("apps", raw)
    alpha = uids["alpha"]
    paths = every_path(forge.data)
    assert any(p.endswith("forge-logs.db") for p in paths) and any("/source-cache/" in p for p in paths)

    read_by_nobody = json.loads(as_uid(NOBODY, ["/usr/bin/python3", "-c", WALKER], json.dumps(paths)))
    assert read_by_nobody == [], f"nobody read {len(read_by_nobody)} paths, e.g. {read_by_nobody[:12]}"

    # Its own: its release tree, its storage and its build cache (written by its own builds).
    own = (
        str(node / "releases" / "alpha" / ""),
        str(node / "storage" / "alpha"),
        str(node / "buildcache" / "alpha"),
    )
    read_by_alpha = json.loads(as_uid(alpha, ["/usr/bin/python3", "-c", WALKER], json.dumps(paths)))
    outside = [p for p in read_by_alpha if not p.startswith(own)]
    assert outside == [], f"alpha's uid read {len(outside)} paths outside its app, e.g. {outside[:12]}"
    assert any(p.endswith("/app.py") for p in read_by_alpha), "alpha's uid still reads its own release"
    # beta's uid cannot even pass into alpha's release dir.
    beta = uids["beta"]
    read_by_beta = json.loads(as_uid(beta, ["/usr/bin/python3", "-c", WALKER], json.dumps(paths)))
    assert not [p for p in read_by_beta if "/alpha" in p], read_by_beta[:12]


def test_only_root_dials_instance_and_service_addresses(forge: Forge) -> None:
    inst = next(i for i in forge.list("instances") if i["spec"]["app"] == "alpha"
                and i["status"].get("phase") == "Running")
    app = forge.get("apps", "alpha")
    targets = [f"{inst['status']['address']}:{inst['status']['port']}"]
    if app["status"].get("serviceAddress"):
        targets.append(app["status"]["serviceAddress"])
    if inst["status"]["address"] in ("127.0.0.1", None):
        pytest.skip("no network namespaces here (dev without nftables): nothing to fence")
    assert as_uid(0, ["/usr/bin/python3", "-c", DIAL, *targets]).split() == ["open"] * len(targets)
    refused = as_uid(NOBODY, ["/usr/bin/python3", "-c", DIAL, *targets]).split()
    assert "open" not in refused, dict(zip(targets, refused, strict=True))
    assert forge.serves("alpha.localhost", "v1"), "Caddy still reaches it"


def test_an_install_left_readable_is_made_private_when_it_starts(forge: Forge) -> None:
    """An install from before (everything go+rX, as the old umask left it) is fixed by the next
    forge up: nobody reads nothing again, and the apps come back."""
    forge.stop()
    # (all but the secret key file, which Forge has always kept 0600 and refuses to use otherwise)
    subprocess.run(["find", str(forge.data), "!", "-name", "secret-keys.json", "-exec", "chmod", "go+rX", "{}", "+"],
                   check=True, timeout=120)
    paths = every_path(forge.data)
    loose = json.loads(as_uid(NOBODY, ["/usr/bin/python3", "-c", WALKER], json.dumps(paths)))
    assert any(p.endswith("forge.db") for p in loose), "the setup really left it readable"
    forge.start()
    forge.wait_phase("alpha-1", {"Live"}, 120)
    paths = every_path(forge.data)
    read_by_nobody = json.loads(as_uid(NOBODY, ["/usr/bin/python3", "-c", WALKER], json.dumps(paths)))
    assert read_by_nobody == [], f"nobody read {len(read_by_nobody)} paths, e.g. {read_by_nobody[:12]}"
    wait_for(lambda: forge.serves("alpha.localhost", "v1"), 60, "alpha served again")
