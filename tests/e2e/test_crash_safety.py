"""A bad release never takes traffic, and a live one that starts crashing is rolled back fast:
real pushes, real processes, a keep-alive and a new-connection client counting every failure."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.e2e.harness import MANIFEST, Forge, Remote, wait_for
from tests.e2e.test_push_to_live import push, register

pytestmark = [pytest.mark.e2e]

CRASHY_PY = r'''
import os, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = open("version.txt").read().strip()
MODE = open("mode.txt").read().strip()
FLAG = os.path.join(os.environ["HOME"], "crash.flag")
if MODE == "exit5":
    threading.Timer(5.0, os._exit, [1]).start()  # passes its first probes, then dies
if os.path.exists(FLAG):
    os._exit(2)  # once told to crash, every restart crashes too


class H(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/crash":
            open(FLAG, "w").write("x")
            os._exit(3)
        body = f"{VERSION}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
'''


def release(remote: Remote, name: str, version: str, mode: str, min_ready: str) -> str:
    return remote.commit({"app.py": CRASHY_PY, "version.txt": version + "\n", "mode.txt": mode + "\n",
                          "forge.yaml": MANIFEST.format(name=name, version=version, extra="", min_ready=min_ready)},
                         f"{version} {mode}")


class Clients:
    """A keep-alive and a new-connection client on one host, recording (time, status, body)."""

    def __init__(self, forge: Forge, host: str) -> None:
        self.forge, self.host = forge, host
        self.stop = threading.Event()
        self.seen: list[tuple[float, int, str]] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.loop, args=(ka,), daemon=True) for ka in (True, False)]

    def loop(self, keepalive: bool) -> None:
        c = httpx.Client(timeout=10)
        try:
            for _ in range(100_000):  # bounded; stops when told
                if self.stop.is_set():
                    return
                if not keepalive:
                    c.close()
                    c = httpx.Client(timeout=10)
                try:
                    r = c.get(f"{self.forge.http}/", headers={"Host": self.host})
                    rec = (time.monotonic(), r.status_code, r.text.strip())
                except httpx.HTTPError as exc:
                    rec = (time.monotonic(), 0, type(exc).__name__)
                with self.lock:
                    self.seen.append(rec)
                time.sleep(0.02)
        finally:
            c.close()

    def __enter__(self) -> Clients:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def failures(self, since: float = 0.0) -> list[tuple[float, int, str]]:
        return [r for r in self.seen if r[0] >= since and r[1] != 200]


def test_release_dying_after_its_first_probes_never_serves(forge: Forge) -> None:
    """v2 passes its probes, then exits 5 s after start: it never answers a request, ends
    Failed (CrashLoopBackOff), and v1's clients see no failure."""
    remote = Remote(forge.root, "acme/dies")
    register(forge, "dies", "acme/dies")
    push(forge, "acme/dies", release(remote, "dies", "v1", "ok", "1s"))
    forge.wait_phase("dies-1", {"Live"})
    wait_for(lambda: forge.serves("dies.localhost", "v1"), 10, "v1")
    with Clients(forge, "dies.localhost") as clients:
        push(forge, "acme/dies", release(remote, "dies", "v2", "exit5", "10s"))  # the default min_ready
        dep = forge.wait_phase("dies-2", {"Live", "Failed"}, timeout=120)
        time.sleep(1.0)
    assert (dep["status"]["phase"], dep["status"]["reason"]) == ("Failed", "CrashLoopBackOff"), dep["status"]
    assert forge.get("apps", "dies")["status"]["liveDeployment"] == "dies-1"
    bodies = {r[2] for r in clients.seen if r[1] == 200}
    assert bodies == {"v1"}, f"v2 answered requests: {bodies}"
    assert not clients.failures(), clients.failures()[:5]
    print(f"dies-2: {len(clients.seen)} requests, all served by v1, 0 failed")


@pytest.mark.alone  # bounds seconds (rollback within 15 s): failed twice under make test's parallel workers
def test_live_release_that_starts_crashing_is_rolled_back_within_15s(forge: Forge) -> None:
    """v2 is live, then crashes and crash-loops: the rollback begins within 15 s of the first
    failure and v1's code serves again; the gap and the failed requests are printed."""
    remote = Remote(forge.root, "acme/turns")
    register(forge, "turns", "acme/turns")
    push(forge, "acme/turns", release(remote, "turns", "v1", "ok", "1s"))
    forge.wait_phase("turns-1", {"Live"})
    push(forge, "acme/turns", release(remote, "turns", "v2", "ok", "1s"))
    forge.wait_phase("turns-2", {"Live"})
    wait_for(lambda: forge.serves("turns.localhost", "v2"), 15, "v2")
    with Clients(forge, "turns.localhost") as clients:
        time.sleep(0.5)
        t0 = time.monotonic()
        try:
            forge.through_caddy("turns.localhost", "/crash")
        except httpx.HTTPError:
            pass

        def rollback() -> dict | None:
            return next((d for d in forge.list("deployments", "forge.dev/app=turns")
                         if d["spec"]["trigger"]["type"] == "rollback"), None)

        dep = wait_for(rollback, 40, "a rollback release")
        t_begin = time.monotonic()
        forge.wait_phase(dep["metadata"]["name"], {"Live"}, timeout=90)
        try:
            wait_for(lambda: clients.seen and clients.seen[-1][2] == "v1", 30, "v1's code to serve")
        except AssertionError as exc:  # say what the clients and the App saw, not only that it timed out
            app = forge.get("apps", "turns")["status"]
            raise AssertionError(f"{exc}; last requests {clients.seen[-5:]}; App status {app}") from None
        t_back = time.monotonic()
        time.sleep(1.0)
    fails = clients.failures(since=t0)
    span = (fails[-1][0] - fails[0][0]) if fails else 0.0
    print(f"first failure -> rollback begins: {t_begin - t0:.1f}s; -> v1 serving again: {t_back - t0:.1f}s; "
          f"{len(fails)} of {len([r for r in clients.seen if r[0] >= t0])} requests failed over {span:.1f}s")
    assert t_begin - t0 <= 15.0, f"rollback began {t_begin - t0:.1f}s after the first failure"
    assert dep["spec"]["rollbackOf"] == "turns-1"
    assert forge.get("deployments", "turns-2")["status"]["reason"] == "RolledBack"
