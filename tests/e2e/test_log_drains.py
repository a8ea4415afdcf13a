"""Log drains end to end: a live app on ``forge up`` drains to Debian's rsyslog over TCP and over
TLS (a CA and server certificate made here; the agent trusts the CA through
``FORGE_DRAIN_CA_FILE``) and to a small HTTPS server (Heroku-style batches). The receivers go
down, the app writes lines, they come back: every line arrives (at least once), in order per
Instance. URL credentials never show in the CLI, the API, Events or forge up's log."""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from forge.nodeagent.drains.syslog import BOM, unframe
from tests import rsyslog
from tests.e2e.harness import Forge, running_forge, wait_for
from tests.e2e.test_cli_live import live_app, ok

pytestmark = [pytest.mark.e2e]

APP = "drained"
USER, PASSWORD, TOKEN = "drain", "s3cretpw", "t0kval"
N_DOWN = 120
N_TOTAL = 30 + N_DOWN + 20


class HttpsReceiver:
    """An HTTPS drain endpoint: checks the logplex headers and Basic auth, keeps every frame;
    answers 503 while ``failing``."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.messages: list[bytes] = []
        self.bad: list[str] = []
        self.failing = False
        self.refused = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if outer.failing:
                    outer.refused += 1
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                msgs, rest = unframe(body)
                want_auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                if (
                    rest
                    or self.headers.get("Content-Type") != "application/logplex-1"
                    or self.headers.get("Logplex-Msg-Count") != str(len(msgs))
                    or self.headers.get("Authorization") != want_auth
                    or self.path != f"/logs?token={TOKEN}"
                ):
                    outer.bad.append(f"{self.path} {dict(self.headers)} rest={rest[:40]!r}")
                outer.messages += msgs
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def received(self) -> list[tuple[str, str, str, str]]:
        out = []
        for m in list(self.messages):
            head, _, msg = m.partition(BOM)
            f = head.decode().split(" ")
            out.append((f[3], f[4], f[5], msg.decode()))
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def setup() -> Iterator[dict[str, Any]]:
    why = rsyslog.available()
    if why:
        pytest.skip(why)
    if shutil.which("caddy") is None:
        pytest.skip("caddy is not installed (make setup)")
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="forge-drains-"))
    ca, cert, key = rsyslog.make_ca(root / "pki", host="localhost")
    tcp, tls = rsyslog.Rsyslog(root / "rsyslog-tcp"), rsyslog.Rsyslog(root / "rsyslog-tls", (ca, cert, key))
    https = HttpsReceiver(cert, key)
    try:
        tcp.start()
        tls.start()
        with running_forge("forge-e2e-drains-", FORGE_MODE="dev", FORGE_DRAIN_CA_FILE=str(ca)) as forge:
            yield {"forge": forge, "tcp": tcp, "tls": tls, "https": https}
    finally:
        global _http
        if _http is not None:
            _http.close()
            _http = None
        tcp.stop()
        tls.stop()
        https.close()
        shutil.rmtree(root, ignore_errors=True)


def marks(received: list[tuple[str, str, str, str]], prefix: str) -> dict[str, list[str]]:
    """Per Instance (PROCID), the ``/PREFIX-N`` request lines of APP, in order of arrival."""
    out: dict[str, list[str]] = {}
    for app, procid, msgid, msg in received:
        if app == APP and msgid == "web" and msg.startswith(f"request /{prefix}-"):
            out.setdefault(procid, []).append(msg.removeprefix("request /"))
    return out


def arrived_all(received: list[tuple[str, str, str, str]], prefix: str, n: int) -> bool:
    seen = {m for lines in marks(received, prefix).values() for m in lines}
    return seen >= {f"{prefix}-{i}" for i in range(n)}


def drains(forge: Forge) -> list[dict[str, Any]]:
    with forge.client as c:
        r = c.get(f"/api/v1/apps/{APP}/drains")
        r.raise_for_status()
        return list(r.json()["items"])


def agent_drain_log(forge: Forge) -> str:
    try:
        text = (forge.data / "logs" / "agent.log").read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(line for line in text.splitlines() if "drain" in line)[-4000:]


def request(forge: Forge, path: str) -> None:
    """A request through Caddy (one kept-alive connection): the app logs ``request PATH``."""
    global _http
    if _http is None:
        _http = httpx.Client(base_url=forge.http, headers={"Host": f"{APP}.localhost"}, timeout=5)
    r = _http.get(path)
    assert r.status_code == 200, r.text


_http: httpx.Client | None = None


def test_drains_survive_receiver_outages(setup: dict[str, Any]) -> None:
    """TCP, TLS and HTTPS drains each receive every line — also those written while they were
    down — in order per Instance; forge drains shows masked URLs and the delivery counters."""
    forge: Forge = setup["forge"]
    tcp, tls, https = setup["tcp"], setup["tls"], setup["https"]
    t0 = time.monotonic()
    live_app(forge, APP)
    print(f"app live in {time.monotonic() - t0:.1f}s")
    https_url = f"https://{USER}:{PASSWORD}@127.0.0.1:{https.port}/logs?token={TOKEN}"
    tls_url = f"syslog+tls://localhost:{tls.port}"
    # The CLI once (the URL on stdin, out of the process list); the API for the others (time).
    out = ok(forge, "drains", "add", APP, "-", stdin=https_url + "\n")
    assert PASSWORD not in out and TOKEN not in out and "***" in out
    with forge.client as c:
        for url in (tcp.url, tls_url):
            assert c.post(f"/api/v1/apps/{APP}/drains", json={"url": url}).status_code == 201
    receivers = {"tcp": tcp.received, "tls": tls.received, "https": https.received}

    # Up: lines arrive (the agent learnt of the drains from its watch, nothing polled).
    for i in range(30):
        request(forge, f"/up-{i}")
    for name, got in receivers.items():
        wait_for(lambda got=got: arrived_all(got(), "up", 30), 30, f"the {name} drain to receive the up lines")

    # Down: the syslog receivers stopped, the HTTPS one answering 503; the app keeps logging.
    tcp.stop()
    tls.stop()
    https.failing = True
    for i in range(N_DOWN):
        request(forge, f"/down-{i}")

    def errors_shown() -> bool:
        return all(d["lastError"] for d in drains(forge))

    t1 = time.monotonic()
    wait_for(errors_shown, 40, "every drain to report its delivery error")
    print(f"errors reported {time.monotonic() - t1:.1f}s after the outage began")
    table = ok(forge, "drains", APP)
    assert "127.0.0.1" in table and "***" in table and PASSWORD not in table and TOKEN not in table

    # Back: everything written meanwhile arrives.
    tcp.start()
    tls.start()
    https.failing = False
    for i in range(20):
        request(forge, f"/after-{i}")
    t2 = time.monotonic()
    for name, got in receivers.items():
        try:
            wait_for(lambda got=got: arrived_all(got(), "down", N_DOWN) and arrived_all(got(), "after", 20), 60,
                     f"the {name} drain to receive the lines written while it was down")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{drains(forge)}\n{agent_drain_log(forge)}") from None
    print(f"caught up {time.monotonic() - t2:.1f}s after the receivers came back")

    for name, got in receivers.items():
        received = got()
        for prefix, n in (("up", 30), ("down", N_DOWN), ("after", 20)):
            per_instance = marks(received, prefix)
            assert len(per_instance) == 1, per_instance.keys()  # one web Instance: PROCID is it
            (procid, lines), = per_instance.items()
            assert procid.startswith(f"{APP}-1-")
            firsts = list(dict.fromkeys(lines))
            assert firsts == [f"{prefix}-{i}" for i in range(n)], f"{name}: {prefix} lines out of order"
        dupes = sum(len(v) for p in ("up", "down", "after") for v in marks(received, p).values()) - N_TOTAL
        print(f"{name}: {N_TOTAL} marked lines, {dupes} delivered twice")
    assert https.refused > 0 and not https.bad, https.bad[:3]

    def delivered() -> list[dict[str, Any]]:
        items = drains(forge)
        return items if all(d["delivered"] >= N_TOTAL and not d["lastError"] for d in items) else []

    items = wait_for(delivered, 30, "the delivery reports to catch up")
    assert {d["url"] for d in items} == {
        tcp.url, tls_url, f"https://{USER}:***@127.0.0.1:{https.port}/logs?token=***"
    }
    assert all(d["dropped"] == 0 for d in items)

    # Credentials never leave: not in forge up's log, Events or any drain answer.
    assert forge.log is not None
    log_text = forge.log.read_text(errors="replace") + "".join(
        f.read_text(errors="replace") for f in (forge.data / "logs").glob("*.log")
    )
    assert "log drain" in log_text  # the agent's log is among them
    events = json.dumps(forge.list("events"))
    for text in (log_text, events, json.dumps(items)):
        assert PASSWORD not in text and TOKEN not in text

    # Removing a drain stops it on the node (its state file goes).
    ok(forge, "drains", "remove", APP, https_url)
    assert len(json.loads(ok(forge, "drains", APP, "-o", "json"))["drains"]) == 2
    state_dir = forge.data / "node" / "drains"
    wait_for(lambda: len(list(state_dir.glob("*.json"))) == 2, 20, "the removed drain's state to go")
