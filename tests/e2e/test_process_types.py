"""Real apps under a real ``forge up``: a release command that migrates a SQLite database in the
app's persistent storage before the switch, workers draining a file queue across a deploy,
cron runs (with a Skipped one), and ``forge run`` with and without stdin."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.harness import Forge, Remote, running_forge, wait_for
from tests.e2e.test_cli_live import cli
from tests.e2e.test_push_to_live import push, register

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0 or shutil.which("caddy") is None,
                                                  reason="needs root and caddy")]

WEB = r'''
import os, sqlite3
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = open("version.txt").read().strip()
DB = os.path.join(os.environ["FORGE_STORAGE_DIR"], "app.db")


class H(BaseHTTPRequestHandler):
    def do_GET(self):
        code, body = 200, b"ok\n"
        if self.path != "/health":
            con = sqlite3.connect(DB, timeout=5)
            notes = [r[0] for r in con.execute("SELECT note FROM notes ORDER BY id")]
            extra = ""
            if VERSION != "v1":  # v2's code needs v2's table: it fails without its migration
                extra = " tags=" + ",".join(r[0] for r in con.execute("SELECT tag FROM tags"))
            con.close()
            body = f"{VERSION} {','.join(notes)}{extra}\n".encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
'''

MIGRATE = r'''
import os, sqlite3, sys
VERSION = open("version.txt").read().strip()
print("migrating to", VERSION, "in", os.environ["FORGE_STORAGE_DIR"], flush=True)
con = sqlite3.connect(os.path.join(os.environ["FORGE_STORAGE_DIR"], "app.db"))
con.execute("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, note TEXT)")
if VERSION != "v1":
    con.execute("CREATE TABLE IF NOT EXISTS tags (tag TEXT)")
    con.execute("INSERT INTO tags VALUES (?)", (VERSION,))
con.execute("INSERT INTO notes (note) VALUES (?)", (VERSION + "-migrated",))
con.commit()
if VERSION == "v3":
    print("migration v3 is broken", flush=True)
    sys.exit(7)
'''

WORKER = r'''
import os, signal, time
S = os.environ["FORGE_STORAGE_DIR"]
Q, P, D = (os.path.join(S, d) for d in ("queue", "processing", "done"))
for d in (Q, P, D):
    os.makedirs(d, exist_ok=True)
VERSION = open("version.txt").read().strip()
stop = False


def term(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, term)
print("worker", VERSION, "up", flush=True)
while not stop:
    jobs = sorted(os.listdir(Q))
    if not jobs:
        time.sleep(0.05)
        continue
    try:
        os.rename(os.path.join(Q, jobs[0]), os.path.join(P, jobs[0]))  # the claim: one worker wins
    except FileNotFoundError:
        continue
    time.sleep(0.05)
    open(os.path.join(D, f"{jobs[0]}.{VERSION}.{os.getpid()}"), "w").close()
    os.unlink(os.path.join(P, jobs[0]))
print("worker", VERSION, "drained", flush=True)
'''

MANIFEST = """name: notes
build:
  commands: ["test -f app.py"]
run:
  command: exec python3 app.py
  stop_timeout: 10s
processes:
  worker: {{command: exec python3 worker.py, replicas: 2, min_running: 2s,
           health: {{command: 'test -d "$FORGE_STORAGE_DIR/queue"'}}}}
release: {{command: python3 migrate.py, timeout: 1m}}
storage: {{size: 64M}}
resources: {{memory: 128M}}
health: {{path: /health, interval: 1s, timeout: 1s, retries: 2, min_ready: 1s}}
"""


@pytest.fixture(scope="module")
def forge() -> Iterator[Forge]:
    with running_forge("forge-e2e-procs-") as f:
        yield f


def release(remote: Remote, version: str) -> str:
    return remote.commit({"app.py": WEB, "migrate.py": MIGRATE, "worker.py": WORKER, "version.txt": version + "\n",
                          "forge.yaml": MANIFEST.format()}, version)


def body(forge: Forge) -> str:
    r = forge.through_caddy("notes.localhost")
    return f"{r.status_code} {r.text.strip()}"


def test_release_command_storage_workers_and_one_off_runs(forge: Forge) -> None:
    remote = Remote(forge.root, "acme/notes")
    register(forge, "notes", "acme/notes")
    push(forge, "acme/notes", release(remote, "v1"))
    dep1 = forge.wait_phase("notes-1", {"Live", "Failed"}, timeout=120)
    assert dep1["status"]["phase"] == "Live", dep1["status"]
    assert dep1["status"]["releasePhase"]["phase"] == "Succeeded"
    wait_for(lambda: body(forge) == "200 v1 v1-migrated", 20, "v1 serving what its release command wrote")
    insts = {i["metadata"]["name"]: i for i in forge.list("instances", "forge.dev/app=notes")}
    rel = insts["notes-1-release"]
    assert rel["status"]["phase"] == "Succeeded" and rel["status"]["exitCode"] == 0
    first_web = min(i["metadata"]["createdAt"] for n, i in insts.items() if n != "notes-1-release")
    assert rel["status"]["finishedTime"] <= first_web  # nothing of the release started before it ended
    assert {n for n in insts if "-worker-" in n} == {"notes-1-worker-0", "notes-1-worker-1"}
    app = forge.get("apps", "notes")
    assert app["status"]["storageNode"] == forge.node

    # a queue fed through a deploy: every job done exactly once
    storage = forge.data / "node" / "storage" / "notes"
    queue = storage / "queue"
    wait_for(lambda: queue.is_dir(), 20, "the workers to make their queue")
    seen: list[str] = []
    stop = threading.Event()

    def feed() -> None:
        for n in range(60):
            tmp = storage / f".job-{n:03d}"
            tmp.write_text("x")
            os.chown(tmp, storage.stat().st_uid, storage.stat().st_gid)
            os.rename(tmp, queue / f"job-{n:03d}")
            time.sleep(0.1)

    def watch() -> None:
        while not stop.is_set():
            try:
                seen.append(body(forge))
            except httpx.HTTPError as exc:
                seen.append(f"error {exc}")
            time.sleep(0.05)

    feeder, watcher = threading.Thread(target=feed), threading.Thread(target=watch)
    feeder.start()
    watcher.start()
    push(forge, "acme/notes", release(remote, "v2"))
    dep2 = forge.wait_phase("notes-2", {"Live", "Failed"}, timeout=120)
    feeder.join()
    wait_for(lambda: not os.listdir(queue) and not os.listdir(storage / "processing"), 30, "the queue to drain")
    stop.set()
    watcher.join()
    assert dep2["status"]["phase"] == "Live", dep2["status"]
    assert all(s.startswith("200 v1 ") or s.startswith("200 v2 ") for s in seen), [s for s in seen if not s.startswith("200")][:5]
    assert all("tags=v2" in s for s in seen if s.startswith("200 v2"))  # v2 only ever served after its migration
    v2_at = next(i for i, s in enumerate(seen) if s.startswith("200 v2"))
    assert not any(s.startswith("200 v1") for s in seen[v2_at + 5:])  # the switch happened once
    done = sorted(os.listdir(storage / "done"))
    jobs = [d.split(".")[0] for d in done]
    assert sorted(set(jobs)) == [f"job-{n:03d}" for n in range(60)] and len(jobs) == 60, done  # none lost, none twice
    wait_for(lambda: body(forge) == "200 v2 v1-migrated,v2-migrated tags=v2", 20, "v2 with v1's rows")

    # a failing release command: the release fails, v2 keeps serving
    push(forge, "acme/notes", release(remote, "v3"))
    dep3 = forge.wait_phase("notes-3", {"Live", "Failed"}, timeout=120)
    assert dep3["status"]["phase"] == "Failed" and dep3["status"]["reason"] == "ReleaseCommandFailed", dep3["status"]
    assert dep3["status"]["releasePhase"]["exitCode"] == 7
    assert not [i for i in forge.list("instances", "forge.dev/deployment=notes-3") if i["metadata"]["name"] != "notes-3-release"]
    assert body(forge).startswith("200 v2 ")
    out = cli(forge, "logs", "notes", "--deployment", "notes-3", "--release")
    assert "migration v3 is broken" in out.stdout, out.stdout + out.stderr

    # one-off commands in the live release, with its storage
    r = cli(forge, "run", "notes", "--", "python3", "-c", "import sys; print(42); sys.exit(3)")
    assert r.returncode == 3 and "42" in r.stdout.split(), (r.returncode, r.stdout, r.stderr)
    r = cli(forge, "run", "-i", "notes", "--", "python3", "-c", "import sys; print(sys.stdin.read().upper())",
            stdin="hello from stdin\n")
    assert r.returncode == 0 and "HELLO FROM STDIN" in r.stdout, (r.returncode, r.stdout, r.stderr)
    r = cli(forge, "run", "notes", "--", "sh", "-c", 'ls "$FORGE_STORAGE_DIR"')
    assert r.returncode == 0 and "app.db" in r.stdout, r.stdout + r.stderr

    # a rollback keeps the rows (and runs no migration)
    out = cli(forge, "rollback", "notes", "--to", "notes-1")
    assert out.returncode == 0, out.stdout + out.stderr
    wait_for(lambda: body(forge) == "200 v1 v1-migrated,v2-migrated,v3-migrated", 60, "v1 again, every row kept")

    # the storage goes only with the app, and the CLI says so
    out = cli(forge, "apps", "delete", "notes", "--yes")
    assert out.returncode == 0 and f"persistent storage on node {forge.node} is deleted" in out.stdout, out.stdout
    wait_for(lambda: not storage.exists(), 90, "the app's storage to be deleted from its node", step=1)
    assert not (forge.data / "node" / "images" / "_storage" / "notes.img").exists()


TICK = """name: tick
build:
  commands: ["true"]
run:
  command: exec python3 -m http.server $PORT
cron:
  - {name: fast, schedule: "* * * * *", command: "echo tick at $(date +%s)"}
  - {name: slow, schedule: "* * * * *", command: "sleep 75; echo slow done"}
health: {path: /, interval: 1s, timeout: 1s, retries: 2, min_ready: 0s}
"""


def test_cron_runs_each_minute_and_skips_while_busy(forge: Forge) -> None:
    remote = Remote(forge.root, "acme/tick")
    register(forge, "tick", "acme/tick")
    push(forge, "acme/tick", remote.commit({"forge.yaml": TICK, "index.html": "tick\n"}, "tick"))
    assert forge.wait_phase("tick-1", {"Live", "Failed"})["status"]["phase"] == "Live"

    def runs(job: str) -> list[dict]:
        items = forge.list("instances", f"forge.dev/app=tick,forge.dev/cron={job}")
        return sorted(items, key=lambda i: i["spec"]["oneshot"]["scheduledTime"])

    wait_for(lambda: len([r for r in runs("fast") if r["status"].get("phase") == "Succeeded"]) >= 2, 150,
             "two fast runs, a minute apart", step=1)
    fast = [r for r in runs("fast") if r["status"].get("phase") == "Succeeded"][:2]
    t0, t1 = (time.mktime(time.strptime(r["spec"]["oneshot"]["scheduledTime"][:19], "%Y-%m-%dT%H:%M:%S")) for r in fast)
    assert t1 - t0 == 60
    assert all(r["status"]["exitCode"] == 0 for r in fast)
    wait_for(lambda: any(r["status"].get("phase") == "Skipped" for r in runs("slow")), 60, "a slow run skipped", step=1)
    slow = runs("slow")
    assert slow[0]["status"].get("phase") in ("Running", "Succeeded", "Starting", "", "Building")
    assert slow[1]["status"]["phase"] == "Skipped" and slow[1]["status"]["reason"] == "PreviousRunActive"
    out = cli(forge, "cron", "tick")
    assert out.returncode == 0 and "fast" in out.stdout and "slow" in out.stdout and "Succeeded" in out.stdout, out.stdout
    logs = cli(forge, "logs", "tick", "--instance", fast[0]["metadata"]["name"])
    assert "tick at" in logs.stdout, logs.stdout
