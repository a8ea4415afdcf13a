"""Against a real gunicorn server (2 gthread workers) in a subprocess: watch streams and log follow."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx

from forge.client import ForgeClient
from tests.api.conftest import COMMIT1, TOKEN, LiveServer, start_server, stop_server


def _read_until(resp: httpx.Response, want: int, kinds: tuple[str, ...] = ("ADDED", "MODIFIED", "DELETED")) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    for line in resp.iter_lines():
        if not line.strip():
            continue
        ev = json.loads(line)
        got.append(ev)
        if sum(1 for e in got if e["type"] in kinds) >= want:
            break
    return got


def test_watch_sees_writes_from_another_thread(live: LiveServer) -> None:
    """A watch stream delivers ADDED/MODIFIED/DELETED written concurrently (possibly by the other worker)."""
    with live.client() as c:
        rv = c.get("/api/v1/events").json()["metadata"]["resourceVersion"]

        def writer() -> None:
            with live.client() as w:
                for i in range(5):
                    body = {"metadata": {"name": f"ev{i}"},
                            "spec": {"involvedObject": {"kind": "App", "name": "x"}, "reason": "Test"}}
                    assert w.post("/api/v1/events", json=body).status_code == 201
                assert w.patch("/api/v1/events/ev0", json={"spec": {"count": 2}}).status_code == 200
                assert w.delete("/api/v1/events/ev1").status_code == 200

        t = threading.Thread(target=writer)
        with c.stream("GET", "/api/v1/events", params={"watch": "true", "resourceVersion": rv,
                                                       "timeoutSeconds": 20}) as resp:
            assert resp.status_code == 200 and resp.headers["content-type"] == "application/x-ndjson"
            t.start()
            events = _read_until(resp, 7)
        t.join()
    changes = [(e["type"], e["object"]["metadata"]["name"]) for e in events if e["type"] != "BOOKMARK"]
    assert changes == [("ADDED", f"ev{i}") for i in range(5)] + [("MODIFIED", "ev0"), ("DELETED", "ev1")]
    revs = [e["object"]["metadata"]["resourceVersion"] for e in events if e["type"] != "BOOKMARK"]
    assert revs == sorted(revs) and revs[0] > rv


def test_watch_heartbeats_and_ends_at_timeout(live: LiveServer) -> None:
    """An idle watch sends BOOKMARKs (at least every 5 s) and the server ends it after timeoutSeconds."""
    with live.client() as c:
        rv = c.get("/api/v1/leases").json()["metadata"]["resourceVersion"]
        started = time.monotonic()
        with c.stream("GET", "/api/v1/leases", params={"watch": "true", "resourceVersion": rv,
                                                       "timeoutSeconds": 6}) as resp:
            lines = [json.loads(x) for x in resp.iter_lines() if x.strip()]
        elapsed = time.monotonic() - started
    assert elapsed < 15
    assert len(lines) >= 2 and all(x["type"] == "BOOKMARK" for x in lines)
    assert all(x["object"]["metadata"]["resourceVersion"] >= rv for x in lines)


def test_node_watch_is_scoped(live: LiveServer) -> None:
    """A node's watch on instances only carries Instances bound to it, through ForgeClient."""
    with ForgeClient(live.url, TOKEN) as admin:
        token = admin.request("POST", "/api/v1/nodes/w1/token")["token"]
        _, rv = admin.list("instances")
        for name, node in (("a-1-0", "w2"), ("a-1-1", "w1")):
            admin.create("instances", {"metadata": {"name": name, "labels": {"forge.dev/node": node}},
                                       "spec": {"app": "a", "deployment": "a-1", "repo": "acme/a", "commit": COMMIT1}})
    with ForgeClient(live.url, token) as node:
        seen = []
        for type_, obj in node.watch("instances", rv, timeout_seconds=10):
            if type_ != "BOOKMARK":
                seen.append((type_, obj["metadata"]["name"]))
                break
    assert seen == [("ADDED", "a-1-1")]


def test_log_follow_streams_new_lines(live: LiveServer) -> None:
    """logs?follow=true streams lines shipped after the request started."""
    with live.client() as c:
        assert c.post("/api/v1/apps", json={"metadata": {"name": "logged"}, "spec": {"repo": "acme/logged"}}).status_code == 201
        assert c.post("/api/v1/instances", json={
            "metadata": {"name": "logged-1-0"},
            "spec": {"app": "logged", "deployment": "logged-1", "repo": "acme/logged", "commit": COMMIT1}}).status_code == 201

        def ship() -> None:
            with live.client() as w:
                for i in range(3):
                    r = w.post("/api/v1/instances/logged-1-0/logs", json={"source": "app", "entries": [
                        {"offset": i, "time": "2030-01-01T00:00:00.000Z", "line": f"line {i}"}]})
                    assert r.json() == {"accepted": 1}

        t = threading.Thread(target=ship)
        got = []
        with c.stream("GET", "/api/v1/apps/logged/logs", params={"follow": "true", "timeoutSeconds": 20}) as resp:
            t.start()
            for line in resp.iter_lines():
                if line.strip():
                    got.append(json.loads(line)["line"])
                if len(got) == 3:
                    break
        t.join()
    assert got == ["line 0", "line 1", "line 2"]


def test_stop_ends_open_watch_and_log_streams(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM to the server ends a 60 s watch and a 60 s log follow at once, and the server
    exits, instead of holding the stop until the streams time out."""
    import signal
    import threading

    import httpx

    from tests.api.conftest import TOKEN, start_server

    server = start_server(tmp_path)
    ended: dict[str, str] = {}
    headers = {"Authorization": f"Bearer {TOKEN}"}

    def hold(name: str, url: str) -> None:
        try:
            with httpx.stream("GET", url, headers=headers, timeout=90) as r:
                for _ in r.iter_bytes():
                    pass
            ended[name] = "closed"
        except httpx.HTTPError as exc:
            ended[name] = type(exc).__name__

    with httpx.Client(base_url=server.url, headers=headers) as c:
        c.post("/api/v1/apps", json={"metadata": {"name": "s"}, "spec": {"repo": "acme/s"}}).raise_for_status()
    threads = [threading.Thread(target=hold, args=("watch", f"{server.url}/api/v1/events?watch=true&resourceVersion=0"
                                                             "&timeoutSeconds=60")),
               threading.Thread(target=hold, args=("logs", f"{server.url}/api/v1/apps/s/logs?follow=true"
                                                            "&timeoutSeconds=60"))]
    for t in threads:
        t.start()
    import time
    time.sleep(1.0)  # both streams open
    assert not ended
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=30)
    for t in threads:
        t.join(timeout=30)
    # "closed": the stream ended cleanly (its last chunk sent) — not cut when gunicorn's graceful
    # timeout killed the worker under it.
    assert ended == {"watch": "closed", "logs": "closed"}, ended


def test_counters_are_whole_across_gunicorn_workers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With 3 workers answering in turn, every scrape sums all of them: the webhook ping counter
    and the request counter never go down and end at exactly what was sent."""
    import hashlib
    import hmac
    import re

    import httpx

    from tests.api.conftest import start_server, stop_server

    secret = "multiproc-secret"
    server = start_server(tmp_path, workers=3, env={"FORGE_GITHUB_WEBHOOK_SECRET": secret})
    body = b'{"zen": "Keep it logically awesome.", "hook_id": 1}'
    headers = {"X-GitHub-Event": "ping", "Content-Type": "application/json",
               "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}
    pings = re.compile(r'^forge_webhook_deliveries_total\{outcome="ping"\} (\S+)$', re.M)
    seen: list[float] = []
    try:
        for i in range(30):
            with httpx.Client(base_url=server.url, timeout=10) as c:  # a new connection: any worker
                assert c.post("/api/v1/webhook/github", content=body,
                              headers={**headers, "X-GitHub-Delivery": f"d-{i}"}).status_code == 200
                m = pings.search(c.get("/metrics").text)
                seen.append(float(m.group(1)) if m else 0.0)
    finally:
        stop_server(server)
    assert seen == sorted(seen), f"a counter went down between scrapes: {seen}"
    assert seen[-1] == 30.0


def test_counters_survive_a_worker_restart(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A worker that exits (gunicorn replaces it) takes nothing with it: the metric files stay
    (forked workers inherit the master's exit handler; only the master may remove them)."""
    import hashlib
    import hmac
    import os
    import re
    import signal

    import httpx

    from forge.upguard import descendants
    from tests.api.conftest import start_server, stop_server

    secret = "restart-secret"
    server = start_server(tmp_path, workers=2, env={"FORGE_GITHUB_WEBHOOK_SECRET": secret})
    body = b'{"zen": "z", "hook_id": 1}'
    headers = {"X-GitHub-Event": "ping", "Content-Type": "application/json",
               "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}
    pings = re.compile(r'^forge_webhook_deliveries_total\{outcome="ping"\} (\S+)$', re.M)

    def ping_and_read(i: int) -> float:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            assert c.post("/api/v1/webhook/github", content=body,
                          headers={**headers, "X-GitHub-Delivery": f"r-{i}"}).status_code == 200
            m = pings.search(c.get("/metrics").text)
            return float(m.group(1)) if m else 0.0

    try:
        seen = [ping_and_read(i) for i in range(10)]
        workers = sorted(descendants(server.proc.pid) - {server.proc.pid})
        os.kill(workers[0], signal.SIGTERM)
        import time
        deadline = time.monotonic() + 20
        while workers[0] in descendants(server.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        seen += [ping_and_read(10 + i) for i in range(10)]
    finally:
        stop_server(server)
    assert seen == sorted(seen) and seen[-1] == 20.0, seen


def test_streams_cannot_take_every_thread(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A client opening watch after watch (a CLI loop gone wrong) gets 429 once the worker's
    stream slots are taken, while plain requests — an agent's lease renewal — are still answered
    at once; a slot comes back when its client leaves."""
    server = start_server(tmp_path, workers=1, extra_args=["--threads", "4"])  # 2 stream slots, 2 kept
    streams = []
    try:
        params = {"watch": "true", "timeoutSeconds": "60"}
        with server.client(timeout=10.0) as c:
            for _ in range(2):
                cm = c.stream("GET", "/api/v1/apps", params=params)
                r = cm.__enter__()
                assert r.status_code == 200
                streams.append(cm)
            r = c.get("/api/v1/apps", params=params)
            assert r.status_code == 429 and r.json()["error"] == "TooManyRequests", r.text
            # Plain requests are answered now: had the streams taken every thread, each would wait
            # for one to end (60 s) and run into this client's 5 s timeout instead.
            assert c.get("/api/v1/apps", timeout=5).status_code == 200
            assert c.get("/readyz", timeout=5).status_code == 200
            streams.pop().__exit__(None, None, None)
            for _ in range(100):  # the server notices the departed client at its next keep-alive line (≤ 4 s)
                r = c.get("/api/v1/apps", params={**params, "timeoutSeconds": "1"})
                if r.status_code == 200:
                    break
                time.sleep(0.1)
            assert r.status_code == 200, r.text
    finally:
        for cm in streams:
            cm.__exit__(None, None, None)
        stop_server(server)
